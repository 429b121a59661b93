// unet_infer: run an exported unet-deploy model (TorchScript or AOTInductor .pt2) from C++,
// preparing pixels and reading the answer exactly as the Python runtime does.
//
// The pipeline mirrors unet_deploy/preprocess.py and unet_deploy/postprocess.py step by step:
// letterbox (Pillow's antialiased bicubic for 8-bit images, reproduced bit for bit in
// pil_resize.cpp; 16-bit ones channel by channel in Pillow's float mode), colour order,
// (pixel / scale - mean) / std, inference, argmax, the float64 un-letterbox index formula, then
// 8-connected regions with their outer contours. With ModelMeta ``tiling`` it tiles instead, as
// unet_deploy/tiling.py does (tiling.cpp). Images are read as fileio.read_image reads them
// (image_read.cpp: EXIF orientation applied, a pixel limit checked on the header).
// The library changes no process-wide state (no setenv, no redirected file descriptors).
// This header does not include torch: programs using it compile quickly.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

namespace unet {

/// A user error (bad file, bad option, bad metadata): one line naming the file, the problem and the fix.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Tiled inference (ModelMeta ``tiling``): resize by ``scale``, tiles overlapping by ``overlap`` of a tile.
struct Tiling {
  double scale = 1.0;
  double overlap = 0.25;
};

/// ``Tiling{scale, overlap}`` if 0.001 <= scale <= 4 and 0 <= overlap < 1 (meta.check_tiling), else Error.
Tiling check_tiling(double scale, double overlap);

/// What a model needs to be used correctly (the ModelMeta JSON of unet_deploy/meta.py).
struct ModelMeta {
  std::vector<std::string> classes;
  int input_h = 256, input_w = 256;
  std::string pad = "top-left";  // "center" or "rect" (pad only to the next multiple of 16)
  double fill = 0.0;
  std::string color = "RGB";  // RGB, BGR or GRAY
  std::vector<double> mean{0.0, 0.0, 0.0};
  std::vector<double> stddev{1.0, 1.0, 1.0};  // JSON key "std"
  double scale = 255.0;
  std::string head = "softmax";  // or "sigmoid" (one logit)
  int in_channels = 3;
  int base_channels = 64;
  std::string upsample = "transpose";
  std::optional<Tiling> tiling;  // absent or null: letterbox the whole image
  bool dynamic = true;           // false (extra.dynamic): the export takes input_size only

  /// Parse and validate ModelMeta JSON (every field as unet_deploy/meta.py checks it); ``source``
  /// names the file in the one-line Error.
  static ModelMeta from_json(const std::string& text, const std::string& source);
  /// Logit channels: one per class, or one for a sigmoid head.
  int num_outputs() const { return head == "sigmoid" ? 1 : static_cast<int>(classes.size()); }
};

/// Where the original image sits inside the network input (see letterbox_geometry in preprocess.py).
struct LetterboxTransform {
  int src_h = 0, src_w = 0;  // original size
  int dst_h = 0, dst_w = 0;  // network input size
  int new_h = 0, new_w = 0;  // resized image inside it
  int top = 0, left = 0;     // its top-left corner; the rest is padding
};

/// One connected defect: class, pixel area, box [x, y, w, h], outer contour in original pixels, and
/// score: the mean over its pixels of the probability of its class (negative: not scored).
struct Region {
  int class_id = 0;
  std::string class_name;
  int area = 0;
  cv::Rect bbox;
  std::vector<cv::Point> contour;
  double score = -1.0;
};

/// Milliseconds spent per stage.
struct Timings {
  double preprocess = 0.0, inference = 0.0, postprocess = 0.0;
};

/// The answer for one image: the class-id mask at the ORIGINAL size, its regions and timings.
struct Result {
  cv::Mat mask;  // CV_8UC1 class ids
  std::vector<Region> regions;
  Timings timings;
  LetterboxTransform transform;
};

// -- preprocessing (unet_deploy/preprocess.py) --------------------------------------------------

/// Resized size floor(H*s + 0.5) (at least 1) and offset for an ``src_h`` x ``src_w`` image; with
/// ``pad == "rect"`` the network size shrinks to the next multiple of 16 (at least 32) of the resized size.
LetterboxTransform letterbox_geometry(int src_h, int src_w, int dst_h, int dst_w, const std::string& pad);

/// Pillow's ``Image.resize(size, BICUBIC, reducing_gap)`` for 8-bit images with 1-4 channels, bit-exact.
cv::Mat pil_resize_bicubic(const cv::Mat& src, cv::Size dsize, double reducing_gap = 3.0);

/// The same resize of a CV_32FC1 plane in Pillow's float mode ("F"): no rounding between passes.
cv::Mat pil_resize_bicubic_float(const cv::Mat& src, cv::Size dsize, double reducing_gap = 3.0);

/// preprocess._resize for gray/BGR 8- or 16-bit images (16-bit: per channel in float, rounded half to even).
cv::Mat resize_image(const cv::Mat& image, cv::Size dsize);

/// Letterbox ``image`` (as OpenCV reads it; BGRA loses its alpha first) into the network size.
/// Returns the padded image in the image's own channel order and depth; fills ``transform``.
cv::Mat letterbox(const cv::Mat& image, const ModelMeta& meta, LetterboxTransform& transform);

/// Letterboxed pixels -> float32 CHW network input in ``meta.color`` order, (pixel/scale - mean)/std.
/// ``dst`` must hold in_channels * boxed.rows * boxed.cols floats.
void normalize_into(const cv::Mat& boxed, const ModelMeta& meta, float* dst);

// -- tiling (unet_deploy/tiling.py) --------------------------------------------------------------

/// Start offsets of the tiles along one axis of ``length`` pixels (tiling.tile_starts).
std::vector<int> tile_starts(int length, int tile, double overlap);

/// float32 ``th x tw`` Gaussian blending weights (tiling.tile_weights), CV_32FC1.
cv::Mat tile_weights(int th, int tw);

/// float32 ``n x C x th x tw`` inputs -> float32 ``n x K x th x tw`` logits written to ``logits``.
using Predictor = std::function<void(const float* inputs, int n, float* logits)>;

/// HxW class ids at the original size from ``meta.input_size`` tiles of ``image`` resized by
/// ``tiling.scale``, blended and argmaxed as tiling.tiled_class_map does (same grid, weights,
/// raster-order float32 sum, reflect-101 padding of short axes, argmax once, mapping back).
/// With ``confidence``: also the probability of the predicted class at each pixel > 0 of the scaled
/// image (of the blended logits divided by the weight sum; 0 elsewhere), CV_32FC1 (tiling.tiled_prediction).
cv::Mat tiled_class_map(const cv::Mat& image, const ModelMeta& meta, const Predictor& predict, const Tiling& tiling,
                        int tile_batch = 8, cv::Mat* confidence = nullptr);

/// Class ids from ``k`` float32 planes of ``plane`` values each (softmax: argmax, ties lowest; one plane: > 0).
void argmax_into(const float* logits, int k, size_t plane, uint8_t* out);

/// The probability of the predicted class, 1 / sum_k exp(l_k - max l) (one plane: the sigmoid of |l|), of
/// the pixel at ``i`` of ``k`` planes of ``plane`` values (postprocess.top_probability).
double top_probability(const float* logits, int k, size_t plane, size_t i);

// -- postprocessing (unet_deploy/postprocess.py) ------------------------------------------------

/// Map a network-size class map back to the original size (float64 nearest, pixel centres aligned).
cv::Mat unletterbox_mask(const cv::Mat& class_map, const LetterboxTransform& t);

/// Every 8-connected component of every class > 0 with area >= ``min_area``, sorted as Python sorts them.
/// With ``confidence`` (CV_32FC1, the probability of the predicted class at the network's pixels, or at
/// the mask's own size when ``t`` is null) each region gets its score, the mean over its original
/// pixels of the value at the network pixel ``t`` maps it from; regions below ``min_score`` are dropped.
std::vector<Region> find_regions(const cv::Mat& mask, const std::vector<std::string>& classes, int min_area,
                                 const cv::Mat* confidence = nullptr, const LetterboxTransform* t = nullptr,
                                 double min_score = 0.0);

/// 8-bit BGR picture: classes filled at 50% in VOC colours, region contours in green.
cv::Mat overlay(const cv::Mat& image, const cv::Mat& mask, const std::vector<Region>& regions);

/// PNG bytes of the class-id ``mask`` as an 8-bit palette image with the VOC colour map.
std::vector<unsigned char> encode_palette_png(const cv::Mat& mask);

// -- I/O helpers --------------------------------------------------------------------------------

/// Read an image as fileio.read_image does: OpenCV's decoding (gray/BGR/BGRA, 8/16 bit) with the
/// EXIF orientation applied (JPEG, PNG eXIf before the pixels, TIFF, WebP), and the pixel limit
/// (UNET_DEPLOY_MAX_IMAGE_PIXELS, default 178956970; 0 or none: no limit) checked on the header
/// before decoding. Throws Error naming the file.
cv::Mat read_image(const std::string& path);

/// Rotate/flip ``image`` as EXIF ``orientation`` (1..8) says, like PIL.ImageOps.exif_transpose.
cv::Mat apply_orientation(const cv::Mat& image, int orientation);

/// Write ``bytes`` to ``path`` atomically (temporary file beside it, then rename).
void write_file_atomic(const std::string& path, const std::vector<unsigned char>& bytes);

/// The per-image report object as one JSON line (schema of OUT/report.json's "images"); non-empty
/// ``mask`` / ``overlay`` add those paths (relative to OUT, as unet-predict writes them).
std::string result_json(const std::string& file, const Result& result, const std::string& mask = "",
                        const std::string& overlay = "");
std::string error_json(const std::string& file, const std::string& message);

/// ``dir/model.torchscript.pt`` -> ``dir/model.json`` (as meta.sidecar_path does).
std::string sidecar_path(const std::string& model_path);

/// Threads for CPU inference (at::set_num_threads); by default libtorch takes one per core.
void set_num_threads(int threads);

// -- the model ----------------------------------------------------------------------------------

/// Loads an exported model (``.torchscript.pt`` or AOTInductor ``.pt2``) with its ModelMeta and
/// segments images. ``device``: "cpu", "cuda" or "auto" (CUDA when libtorch sees a GPU).
class Segmenter {
 public:
  explicit Segmenter(const std::string& model_path, const std::string& device = "auto");
  ~Segmenter();
  Segmenter(const Segmenter&) = delete;
  Segmenter& operator=(const Segmenter&) = delete;

  /// Override the metadata's tiling (as unet-predict's --tile-scale/--overlap/--no-tile): nullopt letterboxes.
  void set_tiling(const std::optional<Tiling>& tiling);

  /// Segment one image as OpenCV reads it; regions smaller than ``min_area`` pixels or scored below
  /// ``min_score`` are dropped.
  Result operator()(const cv::Mat& image, int min_area = 0, double min_score = 0.0);

  const ModelMeta& meta() const;
  const std::string& backend() const;  // "torchscript" or "aoti"
  std::string device() const;          // "cpu" or "cuda"

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace unet
