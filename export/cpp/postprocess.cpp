// unet_infer library, after the network: the un-letterbox, the region contract, the overlay,
// palette-PNG masks, atomic writes and the JSON lines of the report (unet_deploy/postprocess.py,
// data/palette.py and predict.py). No torch here.
#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <tuple>
#include <utility>

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "unet_infer.h"

namespace fs = std::filesystem;

namespace unet {
namespace {

// -- palette PNG ----------------------------------------------------------------------------------

uint32_t crc32(const unsigned char* data, size_t n, uint32_t crc = 0) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

void put_u32(std::vector<unsigned char>& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<unsigned char>(v >> s));
}

uint32_t get_u32(const unsigned char* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

// The PASCAL VOC colour map (RGB): 0 black, 1 dark red, 2 dark green, ... (as data/palette.py).
std::array<std::array<unsigned char, 3>, 256> voc_palette() {
  std::array<std::array<unsigned char, 3>, 256> pal{};
  for (int i = 0; i < 256; ++i) {
    int id = i, r = 0, g = 0, b = 0;
    for (int shift = 7; shift >= 0; --shift) {
      r |= ((id >> 0) & 1) << shift;
      g |= ((id >> 1) & 1) << shift;
      b |= ((id >> 2) & 1) << shift;
      id >>= 3;
    }
    pal[i] = {static_cast<unsigned char>(r), static_cast<unsigned char>(g), static_cast<unsigned char>(b)};
  }
  return pal;
}

}  // namespace

// -- postprocessing -------------------------------------------------------------------------------

cv::Mat unletterbox_mask(const cv::Mat& class_map, const LetterboxTransform& t) {
  CV_Assert(class_map.type() == CV_8UC1 && class_map.rows == t.dst_h && class_map.cols == t.dst_w);
  // Original row y takes network row top + min(floor((y + 0.5) * new_h / H), new_h - 1), in float64.
  std::vector<int> cols(t.src_w);
  for (int x = 0; x < t.src_w; ++x)
    cols[x] = t.left + std::min(static_cast<int>((x + 0.5) * t.new_w / t.src_w), t.new_w - 1);
  cv::Mat out(t.src_h, t.src_w, CV_8UC1);
  for (int y = 0; y < t.src_h; ++y) {
    const int row = t.top + std::min(static_cast<int>((y + 0.5) * t.new_h / t.src_h), t.new_h - 1);
    const uint8_t* src = class_map.ptr<uint8_t>(row);
    uint8_t* dst = out.ptr<uint8_t>(y);
    for (int x = 0; x < t.src_w; ++x) dst[x] = src[cols[x]];
  }
  return out;
}

namespace {

// The network index of each original row and column (preprocess.network_indices; identity without t).
std::pair<std::vector<int>, std::vector<int>> network_indices(const cv::Mat& mask, const LetterboxTransform* t) {
  std::vector<int> rows(mask.rows), cols(mask.cols);
  for (int y = 0; y < mask.rows; ++y)
    rows[y] = t ? t->top + std::min(static_cast<int>((y + 0.5) * t->new_h / t->src_h), t->new_h - 1) : y;
  for (int x = 0; x < mask.cols; ++x)
    cols[x] = t ? t->left + std::min(static_cast<int>((x + 0.5) * t->new_w / t->src_w), t->new_w - 1) : x;
  return {rows, cols};
}

}  // namespace

std::vector<Region> find_regions(const cv::Mat& mask, const std::vector<std::string>& classes, int min_area,
                                 const cv::Mat* confidence, const LetterboxTransform* t, double min_score) {
  CV_Assert(mask.type() == CV_8UC1);
  std::vector<int> rows, cols;
  if (confidence) {
    CV_Assert(confidence->type() == CV_32FC1);
    CV_Assert(t ? (confidence->rows == t->dst_h && confidence->cols == t->dst_w && mask.rows == t->src_h &&
                   mask.cols == t->src_w)
                : confidence->size() == mask.size());
    std::tie(rows, cols) = network_indices(mask, t);
  }
  int hist[256] = {0};
  for (int y = 0; y < mask.rows; ++y) {
    const uint8_t* row = mask.ptr<uint8_t>(y);
    for (int x = 0; x < mask.cols; ++x) ++hist[row[x]];
  }
  struct Keyed {
    std::array<int, 4> key;  // class, bbox y, bbox x, x of the first pixel of the top row
    Region region;
  };
  std::vector<Keyed> found;
  cv::Mat labels, stats, centroids;
  for (int c = 1; c < 256; ++c) {
    if (!hist[c]) continue;
    const std::string name = c < static_cast<int>(classes.size()) ? classes[c] : "class_" + std::to_string(c);
    const cv::Mat binary = mask == c;
    const int n = cv::connectedComponentsWithStats(binary, labels, stats, centroids, 8, CV_32S);
    for (int i = 1; i < n; ++i) {
      const int area = stats.at<int>(i, cv::CC_STAT_AREA);
      if (area < min_area) continue;
      const cv::Rect box(stats.at<int>(i, cv::CC_STAT_LEFT), stats.at<int>(i, cv::CC_STAT_TOP),
                         stats.at<int>(i, cv::CC_STAT_WIDTH), stats.at<int>(i, cv::CC_STAT_HEIGHT));
      const cv::Mat component = labels(box) == i;
      std::vector<std::vector<cv::Point>> contours;
      cv::findContours(component, contours, cv::RETR_EXTERNAL, cv::CHAIN_APPROX_SIMPLE, box.tl());
      auto longest = std::max_element(contours.begin(), contours.end(),
                                      [](const auto& a, const auto& b) { return a.size() < b.size(); });
      Region r{c, name, area, box, longest == contours.end() ? std::vector<cv::Point>{} : *longest};
      if (confidence) {  // the mean, over the region's pixels, of the probability at its network pixel
        double sum = 0.0;
        for (int y = box.y; y < box.y + box.height; ++y) {
          const int* lab = labels.ptr<int>(y);
          const float* p = confidence->ptr<float>(rows[y]);
          for (int x = box.x; x < box.x + box.width; ++x)
            if (lab[x] == i) sum += p[cols[x]];
        }
        r.score = sum / area;
        if (r.score < min_score) continue;
      }
      const int first_x = r.contour.empty() ? box.x : r.contour.front().x;  // the border starts at the first pixel
      found.push_back({{c, box.y, box.x, first_x}, std::move(r)});
    }
  }
  std::stable_sort(found.begin(), found.end(), [](const Keyed& a, const Keyed& b) { return a.key < b.key; });
  std::vector<Region> regions;
  regions.reserve(found.size());
  for (auto& k : found) regions.push_back(std::move(k.region));
  return regions;
}

cv::Mat overlay(const cv::Mat& image, const cv::Mat& mask, const std::vector<Region>& regions) {
  cv::Mat out = image;
  if (out.depth() == CV_16U) {  // >> 8, as postprocess.to_bgr8
    cv::Mat high(out.size(), CV_MAKETYPE(CV_8U, out.channels()));
    for (int y = 0; y < out.rows; ++y) {
      const uint16_t* src = out.ptr<uint16_t>(y);
      uint8_t* dst = high.ptr<uint8_t>(y);
      for (int x = 0; x < out.cols * out.channels(); ++x) dst[x] = static_cast<uint8_t>(src[x] >> 8);
    }
    out = high;
  }
  if (out.channels() == 1) cv::cvtColor(out, out, cv::COLOR_GRAY2BGR);
  else if (out.channels() == 4) cv::cvtColor(out, out, cv::COLOR_BGRA2BGR);
  else out = out.clone();
  CV_Assert(out.size() == mask.size());
  static const auto pal = voc_palette();
  cv::Mat lut(1, 256, CV_8UC3);
  for (int i = 0; i < 256; ++i) lut.at<cv::Vec3b>(0, i) = cv::Vec3b(pal[i][2], pal[i][1], pal[i][0]);  // BGR
  cv::Mat mask3, colors, blended;
  cv::Mat planes[] = {mask, mask, mask};
  cv::merge(planes, 3, mask3);
  cv::LUT(mask3, lut, colors);
  const cv::Mat fg = mask > 0;
  if (cv::countNonZero(fg)) {
    cv::addWeighted(out, 0.5, colors, 0.5, 0.0, blended);
    blended.copyTo(out, fg);
  }
  std::vector<std::vector<cv::Point>> contours;
  for (const auto& r : regions) contours.push_back(r.contour);
  if (!contours.empty()) cv::drawContours(out, contours, -1, cv::Scalar(0, 255, 0), 2);
  return out;
}

std::vector<unsigned char> encode_palette_png(const cv::Mat& mask) {
  CV_Assert(mask.type() == CV_8UC1);
  // OpenCV writes 8-bit gray PNGs only; an 8-bit palette PNG has the very same scanlines, so
  // retag the header as colour type 3 and add the VOC palette (PLTE) right after it.
  std::vector<unsigned char> gray;
  if (!cv::imencode(".png", mask, gray)) throw Error("OpenCV cannot encode the mask as PNG");
  const size_t ihdr_end = 8 + 8 + 13 + 4;  // signature, IHDR length+type, 13 data bytes, CRC
  if (gray.size() < ihdr_end || std::string(gray.begin() + 12, gray.begin() + 16) != "IHDR" || gray[24] != 8 ||
      gray[25] != 0)
    throw Error("unexpected PNG layout from OpenCV");
  std::vector<unsigned char> out(gray.begin(), gray.begin() + ihdr_end);
  out[25] = 3;  // colour type: palette
  const uint32_t ihdr_crc = crc32(&out[12], 4 + 13);
  out[29] = ihdr_crc >> 24, out[30] = (ihdr_crc >> 16) & 0xFF, out[31] = (ihdr_crc >> 8) & 0xFF, out[32] = ihdr_crc & 0xFF;
  static const auto pal = voc_palette();
  std::vector<unsigned char> plte = {'P', 'L', 'T', 'E'};
  for (const auto& rgb : pal) plte.insert(plte.end(), rgb.begin(), rgb.end());
  put_u32(out, 256 * 3);
  out.insert(out.end(), plte.begin(), plte.end());
  put_u32(out, crc32(plte.data(), plte.size()));
  // Copy the remaining chunks (IDAT..., IEND), dropping any that a palette image may not carry.
  size_t pos = ihdr_end;
  while (pos + 12 <= gray.size()) {
    const uint32_t len = get_u32(&gray[pos]);
    const std::string type(gray.begin() + pos + 4, gray.begin() + pos + 8);
    const size_t next = pos + 12 + len;
    if (next > gray.size()) break;
    if (type != "sBIT" && type != "bKGD" && type != "tRNS")
      out.insert(out.end(), gray.begin() + pos, gray.begin() + next);
    pos = next;
  }
  return out;
}

// -- I/O ------------------------------------------------------------------------------------------

void write_file_atomic(const std::string& path, const std::vector<unsigned char>& bytes) {
  const fs::path target(path);
  if (target.has_parent_path()) fs::create_directories(target.parent_path());
  const fs::path tmp = target.parent_path() / ("." + target.filename().string() + ".tmp");
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    f.flush();
    if (!f) {
      std::error_code ec;
      fs::remove(tmp, ec);
      throw Error(path + ": cannot write the file; check the folder's permissions and free space");
    }
  }
  fs::rename(tmp, target);
}

std::string result_json(const std::string& file, const Result& r, const std::string& mask, const std::string& overlay) {
  using nlohmann::ordered_json;
  ordered_json regions = ordered_json::array();
  for (const Region& g : r.regions) {
    ordered_json contour = ordered_json::array();
    for (const auto& p : g.contour) contour.push_back({p.x, p.y});
    regions.push_back({{"class_id", g.class_id}, {"class_name", g.class_name}, {"area", g.area},
                       {"bbox", {g.bbox.x, g.bbox.y, g.bbox.width, g.bbox.height}}, {"contour", contour}});
    if (g.score >= 0.0) regions.back()["score"] = std::round(g.score * 1e6) / 1e6;
  }
  auto ms = [](double v) { return std::round(v * 1000.0) / 1000.0; };
  ordered_json o = {{"file", file}, {"size", {r.mask.rows, r.mask.cols}}, {"regions", regions}};
  if (!mask.empty()) o["mask"] = mask;
  if (!overlay.empty()) o["overlay"] = overlay;
  o["timings"] = {{"preprocess", ms(r.timings.preprocess)}, {"inference", ms(r.timings.inference)},
                  {"postprocess", ms(r.timings.postprocess)}};
  return o.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);  // numbers never follow the locale
}

std::string error_json(const std::string& file, const std::string& message) {
  return nlohmann::ordered_json{{"file", file}, {"error", message}}.dump(-1, ' ', false,
                                                                        nlohmann::json::error_handler_t::replace);
}

}  // namespace unet
