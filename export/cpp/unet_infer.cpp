// unet_infer library: ModelMeta, the letterbox, the model backends (TorchScript, AOTInductor),
// the un-letterbox, the region contract, overlay and palette-PNG masks. See unet_infer.h.
// ModelMeta parsing is in meta.cpp, the image reader in image_read.cpp, tiling in tiling.cpp.
#include "unet_infer.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <sstream>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>
#include <c10/core/InferenceMode.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/jit/serialization/import.h>
#include <torch/cuda.h>
#include <nlohmann/json.hpp>

namespace fs = std::filesystem;

namespace unet {
namespace {

constexpr const char* kExtraFile = "unet_deploy.json";  // TorchScript _extra_files key
constexpr const char* kAotiMetaKey = "unet_deploy";     // AOTInductor package metadata key
constexpr int kDivisor = 16;                            // the UNet halves its input 4 times
constexpr int kMinSize = 2 * kDivisor;

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// The first line of a libtorch error, without its C++ backtrace.
std::string first_line(const std::string& text) {
  std::string line = text.substr(0, text.find('\n'));
  return line.size() > 200 ? line.substr(0, 200) + "..." : line;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// -- letterbox helpers ----------------------------------------------------------------------------

// preprocess.to_model_color for a letterboxed image: gray/BGR -> ``color`` order (BGRA was dropped before).
cv::Mat to_model_color(const cv::Mat& img, const std::string& color) {
  cv::Mat out;
  if (img.channels() == 1) {
    if (color == "GRAY") return img;
    cv::Mat planes[] = {img, img, img};
    cv::merge(planes, 3, out);
    return out;
  }
  if (color == "RGB") cv::cvtColor(img, out, cv::COLOR_BGR2RGB);
  else if (color == "GRAY") cv::cvtColor(img, out, cv::COLOR_BGR2GRAY);
  else out = img;  // BGR in, BGR wanted
  return out;
}

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

// -- model loading helpers ------------------------------------------------------------------------

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// What a .pt/.pth file really is, to turn torch::jit::load's errors into a useful message.
enum class ArchiveKind { TorchScript, TorchSave, NotZip };
ArchiveKind archive_kind(const std::string& path) {
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    return reader.hasRecord("constants.pkl") ? ArchiveKind::TorchScript : ArchiveKind::TorchSave;
  } catch (const std::exception&) {
    return ArchiveKind::NotZip;
  }
}

}  // namespace

// -- preprocessing --------------------------------------------------------------------------------

LetterboxTransform letterbox_geometry(int src_h, int src_w, int dst_h, int dst_w, const std::string& pad) {
  if (src_h < 1 || src_w < 1) throw Error("image of size " + std::to_string(src_h) + "x" + std::to_string(src_w) + " is empty");
  LetterboxTransform t;
  t.src_h = src_h, t.src_w = src_w, t.dst_h = dst_h, t.dst_w = dst_w;
  const double s = std::min(static_cast<double>(dst_h) / src_h, static_cast<double>(dst_w) / src_w);
  t.new_h = std::min(dst_h, std::max(1, static_cast<int>(std::floor(src_h * s + 0.5))));
  t.new_w = std::min(dst_w, std::max(1, static_cast<int>(std::floor(src_w * s + 0.5))));
  if (pad == "center") {
    t.top = (dst_h - t.new_h) / 2;
    t.left = (dst_w - t.new_w) / 2;
  } else if (pad == "rect") {  // pad (bottom/right) only to the next multiple of 16, at least 32
    t.dst_h = std::max(kMinSize, (t.new_h + kDivisor - 1) / kDivisor * kDivisor);
    t.dst_w = std::max(kMinSize, (t.new_w + kDivisor - 1) / kDivisor * kDivisor);
  } else if (pad != "top-left") {
    throw Error("letterbox pad '" + pad + "' must be one of top-left, center, rect");
  }
  return t;
}

cv::Mat letterbox(const cv::Mat& image, const ModelMeta& meta, LetterboxTransform& t) {
  if (image.depth() != CV_8U && image.depth() != CV_16U)
    throw Error("image depth is not supported; pass 8- or 16-bit pixels as OpenCV reads them");
  if (image.channels() != 1 && image.channels() != 3 && image.channels() != 4)
    throw Error("image with " + std::to_string(image.channels()) + " channels is not gray, BGR or BGRA");
  cv::Mat img = image;
  if (img.channels() == 4) cv::cvtColor(image, img, cv::COLOR_BGRA2BGR);  // less to resize
  t = letterbox_geometry(img.rows, img.cols, meta.input_h, meta.input_w, meta.pad);
  if (t.new_h != t.src_h || t.new_w != t.src_w) {
    img = resize_image(img, cv::Size(t.new_w, t.new_h));  // the seed's PIL resize (16-bit: its float mode)
  }
  if (t.new_h != t.dst_h || t.new_w != t.dst_w) {
    cv::Mat padded;
    cv::copyMakeBorder(img, padded, t.top, t.dst_h - t.new_h - t.top, t.left, t.dst_w - t.new_w - t.left,
                       cv::BORDER_CONSTANT, cv::Scalar::all(img.depth() == CV_16U ? meta.fill * 257 : meta.fill));
    img = padded;
  }
  return img.data == image.data ? img.clone() : img;
}

void normalize_into(const cv::Mat& boxed, const ModelMeta& meta, float* dst) {
  cv::Mat img = to_model_color(boxed, meta.color);
  const int c = img.channels(), h = img.rows, w = img.cols;
  if (c != meta.in_channels) throw Error("letterboxed image does not match the model's input channels");
  // Same float32 steps as preprocess.normalize: x * float32(1 / (scale * depth)), then (x - mean) / std.
  const double depth = img.depth() == CV_16U ? 257.0 : 1.0;
  const float factor = static_cast<float>(1.0 / (meta.scale * depth));
  bool affine = false;
  for (int k = 0; k < c; ++k) affine = affine || meta.mean[k] != 0.0 || meta.stddev[k] != 1.0;
  const size_t plane = static_cast<size_t>(h) * w;
  for (int y = 0; y < h; ++y) {
    for (int k = 0; k < c; ++k) {
      const float mean = static_cast<float>(meta.mean[k]), sd = static_cast<float>(meta.stddev[k]);
      float* out = dst + k * plane + static_cast<size_t>(y) * w;
      for (int x = 0; x < w; ++x) {
        float v = img.depth() == CV_16U ? static_cast<float>(img.ptr<uint16_t>(y)[x * c + k])
                                        : static_cast<float>(img.ptr<uint8_t>(y)[x * c + k]);
        v *= factor;
        if (affine) {
          v -= mean;
          v /= sd;
        }
        out[x] = v;
      }
    }
  }
}

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

std::vector<Region> find_regions(const cv::Mat& mask, const std::vector<std::string>& classes, int min_area) {
  CV_Assert(mask.type() == CV_8UC1);
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

std::string sidecar_path(const std::string& model_path) {
  fs::path p(model_path);
  std::string name = p.filename().string();
  for (const char* suffix : {".torchscript.pt", ".onnx", ".pt2", ".xml", ".pt", ".pth"}) {
    if (ends_with(name, suffix)) {
      name = name.substr(0, name.size() - std::string(suffix).size());
      break;
    }
  }
  return (p.parent_path() / (name + ".json")).string();
}

void set_num_threads(int threads) {
  if (threads < 1) throw Error("threads must be at least 1, not " + std::to_string(threads));
  at::set_num_threads(threads);
}

// -- Segmenter ------------------------------------------------------------------------------------

struct Segmenter::Impl {
  std::string path;
  ModelMeta meta;
  std::string backend;
  c10::Device device{c10::kCPU};
  c10::ScalarType dtype = c10::kFloat;
  std::optional<torch::jit::Module> module;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> aoti;
  std::array<int64_t, 4> lo{}, hi{};  // AOTI: least and largest N, C, H, W the package takes (-1: no bound)

  ModelMeta meta_from_sidecar(const std::string& why) const {
    const std::string side = sidecar_path(path);
    if (!fs::is_regular_file(side))
      throw Error(path + ": no ModelMeta (" + why + " and no sidecar " + fs::path(side).filename().string() +
                  "); re-export it with unet-export");
    return ModelMeta::from_json(read_text(side), side);
  }

  void load_torchscript() {
    const ArchiveKind kind = archive_kind(path);
    if (kind == ArchiveKind::TorchSave)
      throw Error(path + ": this is a PyTorch checkpoint/state_dict, not an exported model; run `unet-export " + path +
                  " --format torchscript` (or aoti) and pass the exported file");
    if (kind == ArchiveKind::NotZip)
      throw Error(path + ": not a TorchScript archive (an old torch.save file or another format); export it with "
                  "`unet-export CHECKPOINT --format torchscript`");
    torch::jit::ExtraFilesMap extra{{kExtraFile, ""}};
    try {
      module = torch::jit::load(path, device, extra);
    } catch (const c10::Error& e) {
      throw Error(path + ": not a loadable TorchScript model (" + first_line(e.what_without_backtrace()) + ")");
    }
    module->eval();
    meta = extra[kExtraFile].empty() ? meta_from_sidecar("no unet_deploy.json extra file")
                                     : ModelMeta::from_json(extra[kExtraFile], path + " (extra file)");
    for (const auto& p : module->parameters()) {  // a half-precision export takes half inputs
      if (p.is_floating_point()) dtype = p.scalar_type();
      break;
    }
    backend = "torchscript";
  }

  void load_aoti(const std::string& wish) {
    try {
      aoti = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path);
    } catch (const std::exception& e) {
      throw Error(path + ": not a loadable AOTInductor package (" + first_line(e.what()) + "); re-export it with "
                  "`unet-export CHECKPOINT --format aoti` on this machine's torch");
    }
    auto metadata = aoti->get_metadata();
    const std::string built_for = metadata["AOTI_DEVICE_KEY"].rfind("cuda", 0) == 0 ? "cuda" : "cpu";
    if (wish != "auto" && wish != built_for)
      throw Error(path + ": this package was compiled for " + built_for + ", not " + wish + "; run it with --device " +
                  built_for + " or re-export it on the target device");
    device = built_for == "cuda" ? c10::Device(c10::kCUDA) : c10::Device(c10::kCPU);
    meta = !metadata[kAotiMetaKey].empty() ? ModelMeta::from_json(metadata[kAotiMetaKey], path + " (AOTI metadata)")
                                           : meta_from_sidecar("no unet_deploy package metadata");
    read_aoti_input_checks();
    backend = "aoti";
  }

  // The package's input sizes, read from the input checks of its generated wrapper source (the
  // runtime runs those checks only under AOTI_RUNTIME_CHECK_INPUTS, a process-wide setting the
  // library does not touch): "if (N != argK_size[d])" fixes dim d, "if (argK_size[d] < N)" and
  // "> N" bound it. Without the source, the inductor default: a dynamic batch of at least 2.
  void read_aoti_input_checks() {
    lo = {2, 1, kMinSize, kMinSize};
    hi = {-1, -1, -1, -1};
    std::string source;
    try {
      caffe2::serialize::PyTorchStreamReader reader(path);
      for (const auto& name : reader.getAllRecords()) {
        if (!ends_with(name, ".wrapper.cpp")) continue;
        auto [data, size] = reader.getRecord(name);
        source.assign(static_cast<const char*>(data.get()), size);
        break;
      }
    } catch (const std::exception&) {
      return;
    }
    const size_t at = source.find("static void check_input_0(");
    if (at == std::string::npos) return;
    const size_t end = source.find("_stride", at);
    const std::string checks = source.substr(at, end == std::string::npos ? std::string::npos : end - at);
    lo = {1, 1, 1, 1};
    static const std::regex fixed(R"(if \((\d+) != \w+_size\[(\d)\]\))");
    static const std::regex bound(R"(if \(\w+_size\[(\d)\] ([<>]) (\d+)\))");
    for (std::sregex_iterator it(checks.begin(), checks.end(), fixed), stop; it != stop; ++it) {
      const int d = std::stoi((*it)[2]);
      lo[d] = hi[d] = std::stoll((*it)[1]);
    }
    for (std::sregex_iterator it(checks.begin(), checks.end(), bound), stop; it != stop; ++it) {
      const int d = std::stoi((*it)[1]);
      ((*it)[2] == "<" ? lo[d] : hi[d]) = std::stoll((*it)[3]);
    }
  }

  // Runs ``x`` (N x C x H x W) through the package in batches it takes: padded with zeros up to
  // its least batch, split at its largest; a size it cannot take is a one-line Error.
  at::Tensor run_aoti(const at::Tensor& x) {
    static const char* names[] = {"batch size", "input channels", "input height", "input width"};
    for (int d = 1; d < 4; ++d) {
      if (x.size(d) < lo[d] || (hi[d] >= 0 && x.size(d) > hi[d]))
        throw Error(path + ": the package takes " + names[d] + " " + std::to_string(lo[d]) +
                    (hi[d] == lo[d] ? "" : hi[d] < 0 ? " or more" : " to " + std::to_string(hi[d])) + ", not " +
                    std::to_string(x.size(d)) + "; re-export it for this input size (unet-export without --static)" +
                    (meta.pad == "rect" || meta.tiling ? " or use the square letterbox" : ""));
    }
    const int64_t n = x.size(0);
    const int64_t most = hi[0] >= 0 ? hi[0] : n;
    if (n > most) {
      std::vector<at::Tensor> parts;
      for (int64_t i = 0; i < n; i += most) parts.push_back(run_aoti(x.narrow(0, i, std::min(most, n - i))));
      return at::cat(parts);
    }
    if (n < lo[0]) {
      at::Tensor padded = at::zeros({lo[0], x.size(1), x.size(2), x.size(3)}, x.options());
      padded.narrow(0, 0, n).copy_(x);
      return aoti->run({padded})[0].narrow(0, 0, n);
    }
    return aoti->run({x.contiguous()})[0];
  }

  at::Tensor forward(const at::Tensor& x) {
    if (aoti) return run_aoti(x.to(dtype));
    return module->forward({x.to(dtype)}).toTensor();
  }

  // float32 N x C x H x W on the CPU -> float32 N x K x H x W logits on the CPU, shapes checked.
  at::Tensor logits_of(const at::Tensor& x, Timings& timings) {
    const auto t0 = Clock::now();
    at::Tensor logits = forward(x.to(device));
    if (device.is_cuda()) torch::cuda::synchronize();
    timings.inference += ms_since(t0);
    if (logits.dim() != 4 || logits.size(0) != x.size(0) || logits.size(2) != x.size(2) || logits.size(3) != x.size(3))
      throw Error(path + ": the model returned logits of shape " + c10::str(logits.sizes()) + " for an input of " +
                  c10::str(x.sizes()));
    if (logits.size(1) != meta.num_outputs())
      throw Error(path + ": the model has " + std::to_string(logits.size(1)) + " output channels but its metadata lists " +
                  std::to_string(meta.classes.size()) + " classes; re-export it with the right classes");
    return logits.to(at::kFloat).cpu().contiguous();
  }
};

Segmenter::Segmenter(const std::string& model_path, const std::string& device) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.path = model_path;
  std::error_code ec;
  if (!fs::is_regular_file(model_path, ec)) throw Error(model_path + ": model file not found; check the path");
  const std::string wish = lower(device);
  if (wish != "auto" && wish != "cpu" && wish != "cuda") throw Error("device '" + device + "' is not one of auto, cpu, cuda");
  const bool cuda = torch::cuda::is_available();
  if (wish == "cuda" && !cuda)
    throw Error(model_path + ": CUDA was asked for but libtorch sees no CUDA device (CPU build or no GPU); use --device cpu");
  const std::string name = lower(fs::path(model_path).filename().string());
  if (ends_with(name, ".onnx") || ends_with(name, ".xml"))
    throw Error(model_path + ": unet_infer runs TorchScript (.torchscript.pt) and AOTInductor (.pt2) models; run ONNX/"
                "OpenVINO models with unet-predict, or export with `unet-export CHECKPOINT --format torchscript`");
  if (ends_with(name, ".pt2")) {
    m.load_aoti(wish);
  } else {
    m.device = (wish == "cuda" || (wish == "auto" && cuda)) ? c10::Device(c10::kCUDA) : c10::Device(c10::kCPU);
    m.load_torchscript();
  }
}

Segmenter::~Segmenter() = default;

const ModelMeta& Segmenter::meta() const { return impl_->meta; }
const std::string& Segmenter::backend() const { return impl_->backend; }
std::string Segmenter::device() const { return impl_->device.is_cuda() ? "cuda" : "cpu"; }

void Segmenter::set_tiling(const std::optional<Tiling>& tiling) {
  impl_->meta.tiling = tiling ? std::optional<Tiling>(check_tiling(tiling->scale, tiling->overlap)) : std::nullopt;
}

Result Segmenter::operator()(const cv::Mat& image, int min_area) {
  Impl& m = *impl_;
  const ModelMeta& meta = m.meta;
  c10::InferenceMode guard;
  Result r;
  auto t0 = Clock::now();
  if (meta.tiling) {
    r.transform = letterbox_geometry(image.rows, image.cols, image.rows, image.cols, "top-left");
    const int c = meta.in_channels, k = meta.num_outputs(), th = meta.input_h, tw = meta.input_w;
    const Predictor predict = [&](const float* inputs, int n, float* out) {
      at::Tensor x = at::from_blob(const_cast<float*>(inputs), {n, c, th, tw}, at::kFloat);
      const at::Tensor logits = m.logits_of(x, r.timings);
      std::memcpy(out, logits.data_ptr<float>(), sizeof(float) * static_cast<size_t>(n) * k * th * tw);
    };
    r.mask = tiled_class_map(image, meta, predict, *meta.tiling);
    r.timings.preprocess = ms_since(t0) - r.timings.inference;  // tiles prepared and blended around the calls
  } else {
    const cv::Mat boxed = letterbox(image, meta, r.transform);
    at::Tensor x = at::empty({1, meta.in_channels, boxed.rows, boxed.cols}, at::kFloat);
    normalize_into(boxed, meta, x.data_ptr<float>());
    r.timings.preprocess = ms_since(t0);
    const at::Tensor logits = m.logits_of(x, r.timings);
    t0 = Clock::now();
    cv::Mat class_map(boxed.rows, boxed.cols, CV_8UC1);
    argmax_into(logits.data_ptr<float>(), meta.num_outputs(), static_cast<size_t>(boxed.rows) * boxed.cols,
                class_map.data);
    r.mask = unletterbox_mask(class_map, r.transform);
    r.timings.postprocess = ms_since(t0);
  }
  t0 = Clock::now();
  r.regions = find_regions(r.mask, meta.classes, min_area);
  r.timings.postprocess += ms_since(t0);
  return r;
}

}  // namespace unet
