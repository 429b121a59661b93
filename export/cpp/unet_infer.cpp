// unet_infer library: the letterbox and the model backends (TorchScript, AOTInductor) behind Segmenter.
// See unet_infer.h. ModelMeta parsing is in meta.cpp, the image reader in image_read.cpp, tiling in
// tiling.cpp, everything after the network (regions, overlay, masks, report lines) in postprocess.cpp.
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

  void load_aoti(const std::string& wish, c10::DeviceIndex index) {
    try {  // the device index reaches the package (cuda:N); -1: the current device
      aoti = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, "model", false, 1, index);
    } catch (const std::exception& e) {
      throw Error(path + ": not a loadable AOTInductor package (" + first_line(e.what()) + "); re-export it with "
                  "`unet-export CHECKPOINT --format aoti` on this machine's torch");
    }
    auto metadata = aoti->get_metadata();
    const std::string built_for = metadata["AOTI_DEVICE_KEY"].rfind("cuda", 0) == 0 ? "cuda" : "cpu";
    if (wish != "auto" && wish != built_for)
      throw Error(path + ": this package was compiled for " + built_for + ", not " + wish + "; run it with --device " +
                  built_for + " or re-export it on the target device");
    device = built_for == "cuda" ? c10::Device(c10::kCUDA, index < 0 ? 0 : index) : c10::Device(c10::kCPU);
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
  std::string wish = lower(device);
  c10::DeviceIndex index = -1;  // cuda:N
  if (wish.rfind("cuda:", 0) == 0) {
    const std::string digits = wish.substr(5);
    if (digits.empty() || digits.size() > 4 || digits.find_first_not_of("0123456789") != std::string::npos)
      throw Error("device '" + device + "' is not one of auto, cpu, cuda, cuda:N");
    index = static_cast<c10::DeviceIndex>(std::stoi(digits));
    wish = "cuda";
  }
  if (wish != "auto" && wish != "cpu" && wish != "cuda")
    throw Error("device '" + device + "' is not one of auto, cpu, cuda, cuda:N");
  const bool cuda = torch::cuda::is_available();
  if (wish == "cuda" && !cuda)
    throw Error(model_path + ": CUDA was asked for but libtorch sees no CUDA device (CPU build or no GPU); use --device cpu");
  const auto count = static_cast<int>(torch::cuda::device_count());
  if (index >= count)
    throw Error(model_path + ": cuda:" + std::to_string(index) + " was asked for but this machine has " +
                std::to_string(count) + " CUDA device(s); use --device cuda:0");
  const std::string name = lower(fs::path(model_path).filename().string());
  if (ends_with(name, ".onnx") || ends_with(name, ".xml"))
    throw Error(model_path + ": unet_infer runs TorchScript (.torchscript.pt) and AOTInductor (.pt2) models; run ONNX/"
                "OpenVINO models with unet-predict, or export with `unet-export CHECKPOINT --format torchscript`");
  if (ends_with(name, ".pt2")) {
    m.load_aoti(wish, index);
  } else {
    m.device = (wish == "cuda" || (wish == "auto" && cuda)) ? c10::Device(c10::kCUDA, index < 0 ? 0 : index)
                                                           : c10::Device(c10::kCPU);
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

Result Segmenter::operator()(const cv::Mat& image, int min_area, double min_score) {
  Impl& m = *impl_;
  const ModelMeta& meta = m.meta;
  c10::InferenceMode guard;
  Result r;
  cv::Mat confidence;                       // CV_32FC1: the probability of the predicted class, for scores
  std::optional<LetterboxTransform> back;  // from confidence's pixels to the mask's (none: the same size)
  auto t0 = Clock::now();
  if (meta.tiling) {
    r.transform = letterbox_geometry(image.rows, image.cols, image.rows, image.cols, "top-left");
    const int c = meta.in_channels, k = meta.num_outputs(), th = meta.input_h, tw = meta.input_w;
    const Predictor predict = [&](const float* inputs, int n, float* out) {
      at::Tensor x = at::from_blob(const_cast<float*>(inputs), {n, c, th, tw}, at::kFloat);
      const at::Tensor logits = m.logits_of(x, r.timings);
      std::memcpy(out, logits.data_ptr<float>(), sizeof(float) * static_cast<size_t>(n) * k * th * tw);
    };
    r.mask = tiled_class_map(image, meta, predict, *meta.tiling, 8, &confidence);
    r.timings.preprocess = ms_since(t0) - r.timings.inference;  // tiles prepared and blended around the calls
    if (confidence.size() != r.mask.size()) {  // scaled tiles: the scaled image maps back as tiling.cpp maps it
      back = LetterboxTransform{};
      back->src_h = image.rows, back->src_w = image.cols, back->dst_h = back->new_h = confidence.rows;
      back->dst_w = back->new_w = confidence.cols;
    }
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
    // the probability of the predicted class at the network's pixels of classes > 0 (the region scores')
    const int k = meta.num_outputs();
    const size_t plane = static_cast<size_t>(boxed.rows) * boxed.cols;
    const float* l = logits.data_ptr<float>();
    confidence = cv::Mat::zeros(boxed.rows, boxed.cols, CV_32FC1);
    for (size_t i = 0; i < plane; ++i)
      if (class_map.data[i]) reinterpret_cast<float*>(confidence.data)[i] = static_cast<float>(top_probability(l, k, plane, i));
    back = r.transform;
    r.timings.postprocess = ms_since(t0);
  }
  t0 = Clock::now();
  r.regions = find_regions(r.mask, meta.classes, min_area, &confidence, back ? &*back : nullptr, min_score);
  r.timings.postprocess += ms_since(t0);
  return r;
}

}  // namespace unet
