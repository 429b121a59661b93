// The one image reader, as unet_deploy/fileio.read_image: the size is read from the header and
// checked against the pixel limit before anything is decoded, OpenCV decodes (IMREAD_UNCHANGED:
// gray/BGR/BGRA, 8/16 bit), then the EXIF orientation is applied as PIL.ImageOps.exif_transpose
// does. OpenCV's IMREAD_UNCHANGED ignores EXIF, so the tag is read here from the JPEG APP1
// segment, a PNG eXIf chunk before the pixels, a TIFF's first IFD or a WebP EXIF chunk.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include "unet_infer.h"

namespace fs = std::filesystem;

namespace unet {
namespace {

constexpr long long kDefaultMaxPixels = 178956970;  // fileio.DEFAULT_MAX_IMAGE_PIXELS
constexpr const char* kMaxPixelsEnv = "UNET_DEPLOY_MAX_IMAGE_PIXELS";
constexpr int kOrientationTag = 0x0112;

using Bytes = std::vector<unsigned char>;

struct Header {
  std::optional<std::pair<long long, long long>> size;  // (width, height) when the format is known
  int orientation = 1;
};

uint32_t be(const Bytes& d, size_t at, int n) {
  uint32_t v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | d[at + i];
  return v;
}

uint32_t le(const Bytes& d, size_t at, int n) {
  uint32_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | d[at + i];
  return v;
}

bool starts(const Bytes& d, size_t at, const std::string& s) {
  if (d.size() < at + s.size()) return false;
  for (size_t i = 0; i < s.size(); ++i)
    if (static_cast<unsigned char>(s[i]) != d[at + i]) return false;  // "\x89PNG": char may be signed
  return true;
}

// Orientation (1..8, else 1), width and height tags of the first IFD of a TIFF structure at ``d[at, end)``.
struct Ifd {
  int orientation = 1;
  long long width = 0, height = 0;
};
Ifd read_ifd(const Bytes& d, size_t at, size_t end) {
  Ifd out;
  if (end > d.size() || end < at + 8) return out;
  const bool little = starts(d, at, "II");
  if (!little && !starts(d, at, "MM")) return out;
  auto get = [&](size_t pos, int n) -> uint32_t { return little ? le(d, at + pos, n) : be(d, at + pos, n); };
  if (get(2, 2) != 42) return out;
  const size_t ifd = get(4, 4);
  if (ifd + 2 > end - at) return out;
  const size_t count = get(ifd, 2);
  for (size_t i = 0; i < count && ifd + 2 + 12 * (i + 1) <= end - at; ++i) {
    const size_t e = ifd + 2 + 12 * i;
    const uint32_t tag = get(e, 2), type = get(e + 2, 2);
    const uint32_t value = type == 3 ? get(e + 8, 2) : type == 4 ? get(e + 8, 4) : 0;
    if (tag == kOrientationTag && type == 3) out.orientation = value >= 1 && value <= 8 ? static_cast<int>(value) : 1;
    if (tag == 256) out.width = value;
    if (tag == 257) out.height = value;
  }
  return out;
}

int exif_orientation(const Bytes& d, size_t at, size_t end) {
  if (starts(d, at, std::string("Exif\0\0", 6))) at += 6;
  return read_ifd(d, at, end).orientation;
}

Header probe_jpeg(const Bytes& d) {
  Header h;
  size_t pos = 2;
  bool exif_seen = false;
  while (pos + 4 <= d.size() && d[pos] == 0xFF) {
    const int marker = d[pos + 1];
    if (marker == 0xFF) {  // fill byte
      ++pos;
      continue;
    }
    if (marker == 0xD9 || marker == 0xDA) break;  // end of image, start of scan: no more headers
    const size_t len = be(d, pos + 2, 2);
    if (len < 2 || pos + 2 + len > d.size()) break;
    const size_t body = pos + 4;
    if (marker == 0xE1 && !exif_seen && starts(d, body, std::string("Exif\0\0", 6))) {
      exif_seen = true;
      h.orientation = exif_orientation(d, body, pos + 2 + len);
    }
    const bool sof = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
    if (sof && len >= 7) h.size = {{be(d, body + 3, 2), be(d, body + 1, 2)}};
    pos += 2 + len;
  }
  return h;
}

Header probe_png(const Bytes& d) {
  Header h;
  if (d.size() < 24) return h;
  h.size = {{be(d, 16, 4), be(d, 20, 4)}};
  for (size_t pos = 8; pos + 8 <= d.size();) {
    const size_t len = be(d, pos, 4);
    if (starts(d, pos + 4, "IDAT") || pos + 12 + len > d.size()) break;
    if (starts(d, pos + 4, "eXIf")) h.orientation = exif_orientation(d, pos + 8, pos + 8 + len);
    pos += 12 + len;
  }
  return h;
}

Header probe_webp(const Bytes& d) {
  Header h;
  for (size_t pos = 12; pos + 8 <= d.size();) {
    const size_t len = le(d, pos + 4, 4), body = pos + 8;
    if (body + len > d.size()) break;
    if (starts(d, pos, "VP8X") && len >= 10) h.size = {{le(d, body + 4, 3) + 1LL, le(d, body + 7, 3) + 1LL}};
    if (starts(d, pos, "VP8 ") && len >= 10 && !h.size) h.size = {{le(d, body + 6, 2) & 0x3FFF, le(d, body + 8, 2) & 0x3FFF}};
    if (starts(d, pos, "VP8L") && len >= 5 && !h.size) {
      const uint32_t bits = le(d, body + 1, 4);
      h.size = {{(bits & 0x3FFF) + 1LL, ((bits >> 14) & 0x3FFF) + 1LL}};
    }
    if (starts(d, pos, "EXIF")) h.orientation = exif_orientation(d, body, body + len);
    pos = body + len + (len & 1);
  }
  return h;
}

// The header facts fileio._probe gets from Pillow; unknown formats: no size, no rotation.
Header probe(const Bytes& d) {
  if (d.size() >= 4 && d[0] == 0xFF && d[1] == 0xD8) return probe_jpeg(d);
  if (starts(d, 0, "\x89PNG\r\n\x1a\n")) return probe_png(d);
  if (starts(d, 0, "RIFF") && starts(d, 8, "WEBP")) return probe_webp(d);
  Header h;
  if (starts(d, 0, "II*") || starts(d, 0, "MM")) {
    const Ifd ifd = read_ifd(d, 0, d.size());
    h.orientation = ifd.orientation;
    if (ifd.width && ifd.height) h.size = {{ifd.width, ifd.height}};
  } else if (starts(d, 0, "BM") && d.size() >= 26) {
    const long long w = static_cast<int32_t>(le(d, 18, 4)), hh = static_cast<int32_t>(le(d, 22, 4));
    h.size = {{std::llabs(w), std::llabs(hh)}};
  } else if (starts(d, 0, "GIF8") && d.size() >= 10) {
    h.size = {{le(d, 6, 2), le(d, 8, 2)}};
  }
  return h;
}

// fileio.MAX_IMAGE_PIXELS from the environment; 0 = no limit.
long long pixel_limit() {
  const char* env = std::getenv(kMaxPixelsEnv);
  std::string text = env ? env : "";
  text.erase(0, text.find_first_not_of(" \t"));
  text.erase(text.find_last_not_of(" \t") + 1);
  if (text.empty()) return kDefaultMaxPixels;
  if (text == "0" || text == "none" || text == "None" || text == "NONE") return 0;
  std::string digits;
  for (char c : text)
    if (c != '_') digits += c;
  try {
    size_t used = 0;
    const long long n = std::stoll(digits, &used);
    if (used == digits.size()) return n;
  } catch (const std::exception&) {
  }
  return kDefaultMaxPixels;
}

std::string grouped(long long n) {
  std::string s = std::to_string(n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

}  // namespace

cv::Mat apply_orientation(const cv::Mat& image, int orientation) {
  cv::Mat out;
  switch (orientation) {
    case 2: cv::flip(image, out, 1); break;
    case 3: cv::flip(image, out, -1); break;
    case 4: cv::flip(image, out, 0); break;
    case 5: cv::transpose(image, out); break;
    case 6: cv::rotate(image, out, cv::ROTATE_90_CLOCKWISE); break;
    case 7: cv::transpose(image, out); cv::flip(out, out, -1); break;
    case 8: cv::rotate(image, out, cv::ROTATE_90_COUNTERCLOCKWISE); break;
    default: return image;
  }
  return out;
}

cv::Mat read_image(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw Error(path + ": image file not found; check the path");
  std::ifstream f(path, std::ios::binary);
  const Bytes data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (!f && !f.eof()) throw Error(path + ": cannot read file; check the path and its permissions");
  const Header header = probe(data);
  const long long limit = pixel_limit();
  if (header.size && limit > 0) {
    const auto [w, h] = *header.size;
    if (w * h > limit)
      throw Error(path + ": image of " + std::to_string(w) + "x" + std::to_string(h) + " (" + grouped(w * h) +
                  " pixels) exceeds the limit of " + grouped(limit) + " pixels; raise it with " + kMaxPixelsEnv + "=" +
                  std::to_string(w * h) + " (0: no limit)");
  }
  cv::Mat img;
  if (!data.empty()) img = cv::imdecode(cv::Mat(1, static_cast<int>(data.size()), CV_8UC1, const_cast<unsigned char*>(data.data())), cv::IMREAD_UNCHANGED);
  if (img.empty()) throw Error(path + ": not a readable image (corrupt or unsupported format)");
  return apply_orientation(img, header.orientation);
}

}  // namespace unet
