// Pillow's antialiased BICUBIC resize with reducing_gap, reproduced bit for bit for 8-bit images.
//
// unet_deploy.preprocess resizes 8-bit images with
// ``PIL.Image.resize(size, Image.BICUBIC, reducing_gap=3.0)``, which does:
//   1. if the image shrinks by >= 2 * reducing_gap on an axis, a box "reduce" by the integer
//      factor floor(scale / reducing_gap) first (mean of each factor x factor block, partial
//      blocks at the right/bottom edges, rounded with Pillow's 2^24 fixed-point reciprocal);
//   2. a separable convolution, horizontal pass then vertical pass, with the Keys cubic
//      (a = -0.5) stretched by the downscale factor (antialiasing), taps normalised to sum 1,
//      quantised to 22-bit fixed point, each pass rounded and clipped to 8 bits;
//      the source box of step 2 is (0, 0, W / fx, H / fy) in single precision.
// Every rounding step below is Pillow's, so the output equals Pillow's byte for byte.
// 16-bit images go channel by channel through Pillow's float mode ("F"): the same box reduce
// (exact integer sums times a float64 reciprocal, stored as float32) and the same taps, unquantised,
// summed in float64 and stored as float32 after each pass (Pillow's *_32bpc functions).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <opencv2/core.hpp>

#include "unet_infer.h"

namespace unet {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // 8 result bits, 2 bits of headroom for negative taps
constexpr double kBicubicSupport = 2.0;

double keys_cubic(double x) {
  const double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

// Taps of one 1-D pass: output i reads count[i] inputs from first[i] with weights taps[i*ksize...],
// integers with ``precision`` fractional bits.
struct Taps {
  int ksize = 0;
  int precision = 0;
  std::vector<int> first, count;
  std::vector<int32_t> taps;
  std::vector<double> weights;  // the unquantised taps (float mode)
};

Taps make_taps(int in_size, float in0, float in1, int out_size) {
  Taps t;
  const double scale = static_cast<double>(in1 - in0) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = kBicubicSupport * filter_scale;
  t.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.first.resize(out_size);
  t.count.resize(out_size);
  std::vector<double> w(static_cast<size_t>(out_size) * t.ksize, 0.0);
  for (int i = 0; i < out_size; ++i) {
    const double center = in0 + (i + 0.5) * scale;
    const double inv = 1.0 / filter_scale;
    int lo = static_cast<int>(center - support + 0.5);
    int hi = static_cast<int>(center + support + 0.5);
    lo = std::max(lo, 0);
    hi = std::min(hi, in_size);
    const int n = hi - lo;
    double* wi = &w[static_cast<size_t>(i) * t.ksize];
    double total = 0.0;
    for (int k = 0; k < n; ++k) {
      wi[k] = keys_cubic((k + lo - center + 0.5) * inv);
      total += wi[k];
    }
    if (total != 0.0)
      for (int k = 0; k < n; ++k) wi[k] /= total;
    t.first[i] = lo;
    t.count[i] = n;
  }
  t.precision = kPrecisionBits;
  t.weights = w;
  t.taps.resize(w.size());
  for (size_t k = 0; k < w.size(); ++k) {
    const double v = w[k] * (1 << kPrecisionBits);
    t.taps[k] = static_cast<int32_t>(w[k] < 0 ? -0.5 + v : 0.5 + v);
  }
  return t;
}

inline uint8_t clip8(int32_t acc, int precision) {
  const int32_t v = acc >> precision;  // arithmetic shift: floor, as Pillow does
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// Horizontal pass over rows [row0, row0 + out.rows) of ``in``.
void pass_horizontal(const cv::Mat& in, cv::Mat& out, int row0, const Taps& t) {
  const int ch = in.channels();
  for (int y = 0; y < out.rows; ++y) {
    const uint8_t* src = in.ptr<uint8_t>(y + row0);
    uint8_t* dst = out.ptr<uint8_t>(y);
    for (int x = 0; x < out.cols; ++x) {
      const int32_t* k = &t.taps[static_cast<size_t>(x) * t.ksize];
      const uint8_t* s = src + static_cast<size_t>(t.first[x]) * ch;
      for (int c = 0; c < ch; ++c) {
        int32_t acc = 1 << (t.precision - 1);
        for (int i = 0; i < t.count[x]; ++i) acc += s[i * ch + c] * k[i];
        dst[x * ch + c] = clip8(acc, t.precision);
      }
    }
  }
}

// Vertical pass; ``t.first`` is relative to row 0 of ``in``.
void pass_vertical(const cv::Mat& in, cv::Mat& out, const Taps& t) {
  const int row_len = in.cols * in.channels();
  for (int y = 0; y < out.rows; ++y) {
    const int32_t* k = &t.taps[static_cast<size_t>(y) * t.ksize];
    uint8_t* dst = out.ptr<uint8_t>(y);
    for (int x = 0; x < row_len; ++x) {
      int32_t acc = 1 << (t.precision - 1);
      for (int i = 0; i < t.count[y]; ++i) acc += in.ptr<uint8_t>(t.first[y] + i)[x] * k[i];
      dst[x] = clip8(acc, t.precision);
    }
  }
}

// Float mode passes (CV_32FC1): float64 sums of float32 pixels times the float64 taps.
void pass_horizontal_f(const cv::Mat& in, cv::Mat& out, int row0, const Taps& t) {
  for (int y = 0; y < out.rows; ++y) {
    const float* src = in.ptr<float>(y + row0);
    float* dst = out.ptr<float>(y);
    for (int x = 0; x < out.cols; ++x) {
      const double* k = &t.weights[static_cast<size_t>(x) * t.ksize];
      const float* s = src + t.first[x];
      double ss = 0.0;
      for (int i = 0; i < t.count[x]; ++i) ss += s[i] * k[i];
      dst[x] = static_cast<float>(ss);
    }
  }
}

void pass_vertical_f(const cv::Mat& in, cv::Mat& out, const Taps& t) {
  for (int y = 0; y < out.rows; ++y) {
    const double* k = &t.weights[static_cast<size_t>(y) * t.ksize];
    float* dst = out.ptr<float>(y);
    for (int x = 0; x < in.cols; ++x) {
      double ss = 0.0;
      for (int i = 0; i < t.count[y]; ++i) ss += in.ptr<float>(t.first[y] + i)[x] * k[i];
      dst[x] = static_cast<float>(ss);
    }
  }
}

// Pillow's float-mode reduce: the block sum (exact for 16-bit values) times 1.0 / block pixels.
cv::Mat box_reduce_f(const cv::Mat& in, int fx, int fy) {
  cv::Mat out((in.rows + fy - 1) / fy, (in.cols + fx - 1) / fx, CV_32FC1);
  for (int oy = 0; oy < out.rows; ++oy) {
    const int y0 = oy * fy, y1 = std::min(y0 + fy, in.rows);
    for (int ox = 0; ox < out.cols; ++ox) {
      const int x0 = ox * fx, x1 = std::min(x0 + fx, in.cols);
      const double multiplier = 1.0 / ((x1 - x0) * (y1 - y0));
      double ss = 0.0;
      for (int y = y0; y < y1; ++y)
        for (int x = x0; x < x1; ++x) ss += in.ptr<float>(y)[x];
      out.ptr<float>(oy)[ox] = static_cast<float>(ss * multiplier);
    }
  }
  return out;
}

// Pillow's Image.reduce((fx, fy)): block means, partial blocks at the right and bottom edges.
cv::Mat box_reduce(const cv::Mat& in, int fx, int fy) {
  const int ch = in.channels();
  cv::Mat out((in.rows + fy - 1) / fy, (in.cols + fx - 1) / fx, in.type());
  std::vector<uint32_t> sum(ch);
  for (int oy = 0; oy < out.rows; ++oy) {
    const int y0 = oy * fy, y1 = std::min(y0 + fy, in.rows);
    uint8_t* dst = out.ptr<uint8_t>(oy);
    for (int ox = 0; ox < out.cols; ++ox) {
      const int x0 = ox * fx, x1 = std::min(x0 + fx, in.cols);
      const uint32_t n = static_cast<uint32_t>((x1 - x0) * (y1 - y0));
      // Pillow divides by n with a float-computed 2^32 / (256 n) multiplier, then >> 24.
      const uint32_t multiplier = static_cast<uint32_t>(4294967296.0f / static_cast<float>(256u * n));
      std::fill(sum.begin(), sum.end(), n / 2);
      for (int y = y0; y < y1; ++y) {
        const uint8_t* row = in.ptr<uint8_t>(y);
        for (int x = x0; x < x1; ++x)
          for (int c = 0; c < ch; ++c) sum[c] += row[x * ch + c];
      }
      for (int c = 0; c < ch; ++c) dst[ox * ch + c] = static_cast<uint8_t>((sum[c] * multiplier) >> 24);
    }
  }
  return out;
}

// Pillow's ImagingResample with a BICUBIC filter over the source box (x0, y0, x1, y1).
cv::Mat resample(const cv::Mat& in, int out_w, int out_h, const float box[4]) {
  const bool is_float = in.depth() == CV_32F;
  auto horizontal = [&](const cv::Mat& a, cv::Mat& b, int row0, const Taps& t) {
    is_float ? pass_horizontal_f(a, b, row0, t) : pass_horizontal(a, b, row0, t);
  };
  auto vertical = [&](const cv::Mat& a, cv::Mat& b, const Taps& t) {
    is_float ? pass_vertical_f(a, b, t) : pass_vertical(a, b, t);
  };
  const bool need_h = out_w != in.cols || box[0] != 0.0f || box[2] != static_cast<float>(out_w);
  const bool need_v = out_h != in.rows || box[1] != 0.0f || box[3] != static_cast<float>(out_h);
  Taps vert = make_taps(in.rows, box[1], box[3], out_h);
  Taps hor = make_taps(in.cols, box[0], box[2], out_w);
  // Pillow >= 12 runs the vertical pass first when the height shrinks by more than twice as
  // many pixels as the width does (cheaper; the rounding differs, so we follow it).
  const bool vertical_first = out_h < in.rows && (in.rows - out_h) > 2 * (in.cols - out_w);
  cv::Mat cur = in;
  if (vertical_first) {
    if (need_v) {
      cv::Mat tmp(out_h, in.cols, in.type());
      vertical(in, tmp, vert);
      cur = tmp;
    }
    if (need_h) {
      cv::Mat out(cur.rows, out_w, in.type());
      horizontal(cur, out, 0, hor);
      cur = out;
    }
  } else {
    const int row_first = vert.first.front();
    const int row_last = vert.first.back() + vert.count.back();
    if (need_h) {
      for (int& f : vert.first) f -= row_first;  // the horizontal pass keeps only the rows used
      cv::Mat tmp(row_last - row_first, out_w, in.type());
      horizontal(in, tmp, row_first, hor);
      cur = tmp;
    }
    if (need_v) {
      cv::Mat out(out_h, cur.cols, in.type());
      vertical(cur, out, vert);
      cur = out;
    }
  }
  return cur.data == in.data ? in.clone() : cur;
}


// Image.resize(dsize, BICUBIC, reducing_gap) of an 8-bit image or a float plane.
cv::Mat pil_resize(const cv::Mat& src, cv::Size dsize, double reducing_gap) {
  CV_Assert(dsize.width > 0 && dsize.height > 0 && !src.empty());
  const int w = src.cols, h = src.rows;
  if (dsize.width == w && dsize.height == h) return src.clone();
  cv::Mat in = src.isContinuous() ? src : src.clone();
  float box[4] = {0.0f, 0.0f, static_cast<float>(w), static_cast<float>(h)};
  if (reducing_gap > 0.0) {
    // Python: int(W / out_w / reducing_gap) or 1
    const int fx = std::max(1, static_cast<int>(static_cast<double>(w) / dsize.width / reducing_gap));
    const int fy = std::max(1, static_cast<int>(static_cast<double>(h) / dsize.height / reducing_gap));
    if (fx > 1 || fy > 1) {
      // With the full image as box, Pillow's "safe box" is the full image too.
      in = in.depth() == CV_32F ? box_reduce_f(in, fx, fy) : box_reduce(in, fx, fy);
      box[2] = static_cast<float>(static_cast<double>(w) / fx);
      box[3] = static_cast<float>(static_cast<double>(h) / fy);
    }
  }
  return resample(in, dsize.width, dsize.height, box);
}

}  // namespace

cv::Mat pil_resize_bicubic(const cv::Mat& src, cv::Size dsize, double reducing_gap) {
  CV_Assert(src.depth() == CV_8U && src.channels() >= 1 && src.channels() <= 4);
  return pil_resize(src, dsize, reducing_gap);
}

cv::Mat pil_resize_bicubic_float(const cv::Mat& src, cv::Size dsize, double reducing_gap) {
  CV_Assert(src.type() == CV_32FC1);
  return pil_resize(src, dsize, reducing_gap);
}

cv::Mat resize_image(const cv::Mat& image, cv::Size dsize) {
  if (image.depth() == CV_8U) return pil_resize_bicubic(image, dsize, 3.0);
  CV_Assert(image.depth() == CV_16U && (image.channels() == 1 || image.channels() == 3));
  std::vector<cv::Mat> planes;
  cv::split(image, planes);
  for (cv::Mat& p : planes) {
    cv::Mat f;
    p.convertTo(f, CV_32F);
    const cv::Mat r = pil_resize_bicubic_float(f, dsize, 3.0);
    cv::Mat u(r.size(), CV_16UC1);
    for (int y = 0; y < r.rows; ++y)
      for (int x = 0; x < r.cols; ++x) {
        const double v = std::nearbyint(static_cast<double>(r.ptr<float>(y)[x]));  // np.rint: half to even
        u.ptr<uint16_t>(y)[x] = static_cast<uint16_t>(std::min(65535.0, std::max(0.0, v)));
      }
    p = u;
  }
  cv::Mat out;
  cv::merge(planes, out);
  return out;
}

}  // namespace unet
