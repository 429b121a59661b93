// unet_infer: run an exported unet-deploy model (TorchScript or AOTInductor .pt2) from C++,
// preparing pixels and reading the answer exactly as the Python runtime does.
//
// The pipeline mirrors unet_deploy/preprocess.py and unet_deploy/postprocess.py step by step:
// letterbox (Pillow's antialiased bicubic for 8-bit images, reproduced bit for bit in
// pil_resize.cpp), colour order, (pixel / scale - mean) / std, inference, argmax, the float64
// un-letterbox index formula, then 8-connected regions with their outer contours.
// This header does not include torch: programs using it compile quickly.
#pragma once

#include <memory>
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

/// What a model needs to be used correctly (the ModelMeta JSON of unet_deploy/meta.py).
struct ModelMeta {
  std::vector<std::string> classes;
  int input_h = 256, input_w = 256;
  std::string pad = "top-left";  // or "center"
  double fill = 0.0;
  std::string color = "RGB";  // RGB, BGR or GRAY
  std::vector<double> mean{0.0, 0.0, 0.0};
  std::vector<double> stddev{1.0, 1.0, 1.0};  // JSON key "std"
  double scale = 255.0;
  std::string head = "softmax";  // or "sigmoid" (one logit)
  int in_channels = 3;

  /// Parse and validate ModelMeta JSON; ``source`` names the file in error messages.
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

/// One connected defect: class, pixel area, box [x, y, w, h] and outer contour in original pixels.
struct Region {
  int class_id = 0;
  std::string class_name;
  int area = 0;
  cv::Rect bbox;
  std::vector<cv::Point> contour;
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

/// Resized size floor(H*s + 0.5) (at least 1) and offset for an ``src_h`` x ``src_w`` image.
LetterboxTransform letterbox_geometry(int src_h, int src_w, int dst_h, int dst_w, const std::string& pad);

/// Pillow's ``Image.resize(size, BICUBIC, reducing_gap)`` for 8-bit images with 1-4 channels, bit-exact.
cv::Mat pil_resize_bicubic(const cv::Mat& src, cv::Size dsize, double reducing_gap = 3.0);

/// Letterbox ``image`` (as OpenCV reads it; BGRA loses its alpha first) into the network size.
/// Returns the padded image in the image's own channel order and depth; fills ``transform``.
cv::Mat letterbox(const cv::Mat& image, const ModelMeta& meta, LetterboxTransform& transform);

/// Letterboxed pixels -> float32 CHW network input in ``meta.color`` order, (pixel/scale - mean)/std.
/// ``dst`` must hold in_channels * input_h * input_w floats.
void normalize_into(const cv::Mat& boxed, const ModelMeta& meta, float* dst);

// -- postprocessing (unet_deploy/postprocess.py) ------------------------------------------------

/// Map a network-size class map back to the original size (float64 nearest, pixel centres aligned).
cv::Mat unletterbox_mask(const cv::Mat& class_map, const LetterboxTransform& t);

/// Every 8-connected component of every class > 0 with area >= ``min_area``, sorted as Python sorts them.
std::vector<Region> find_regions(const cv::Mat& mask, const std::vector<std::string>& classes, int min_area);

/// 8-bit BGR picture: classes filled at 50% in VOC colours, region contours in green.
cv::Mat overlay(const cv::Mat& image, const cv::Mat& mask, const std::vector<Region>& regions);

/// PNG bytes of the class-id ``mask`` as an 8-bit palette image with the VOC colour map.
std::vector<unsigned char> encode_palette_png(const cv::Mat& mask);

// -- I/O helpers --------------------------------------------------------------------------------

/// Read an image as OpenCV does (gray/BGR/BGRA, 8/16 bit); throws Error naming the file.
cv::Mat read_image(const std::string& path);

/// Write ``bytes`` to ``path`` atomically (temporary file beside it, then rename).
void write_file_atomic(const std::string& path, const std::vector<unsigned char>& bytes);

/// The per-image report object as one JSON line (schema of OUT/report.json's "images").
std::string result_json(const std::string& file, const Result& result);
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

  /// Segment one image as OpenCV reads it; regions smaller than ``min_area`` pixels are dropped.
  Result operator()(const cv::Mat& image, int min_area = 0);

  const ModelMeta& meta() const;
  const std::string& backend() const;  // "torchscript" or "aoti"
  std::string device() const;          // "cpu" or "cuda"

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace unet
