// Tiled inference at native resolution, step for step as unet_deploy/tiling.py (read its module
// docstring for the rules): the scale resize, the tile grid, the Gaussian weights, the raster-order
// float32 blend in a strip of tile rows, reflect-101 padding of axes shorter than a tile, one
// argmax, and the letterbox's pixel-centre mapping back to the original size.
#include <algorithm>
#include <cmath>
#include <cstring>

#include <opencv2/imgproc.hpp>

#include "unet_infer.h"

namespace unet {
namespace {

constexpr double kSigmaScale = 0.125;  // tiling.SIGMA_SCALE

// numpy's "reflect" padding index (OpenCV's BORDER_REFLECT_101), repeated for long pads.
int reflect101(int p, int n) {
  if (n == 1) return 0;
  const int period = 2 * n - 2;
  p %= period;
  return p < n ? p : period - p;
}

// float32 C x th x tw input of the tile at (y, x): normalised pixels, padded by reflection where the image ends.
void tile_input(const cv::Mat& image, int y, int x, int th, int tw, const ModelMeta& meta, float* dst,
                std::vector<float>& scratch) {
  const int hh = std::min(th, image.rows - y), ww = std::min(tw, image.cols - x);
  const int c = meta.in_channels;
  scratch.resize(static_cast<size_t>(c) * hh * ww);
  normalize_into(image(cv::Rect(x, y, ww, hh)), meta, scratch.data());
  std::vector<int> cols(tw);
  for (int j = 0; j < tw; ++j) cols[j] = reflect101(j, ww);
  for (int k = 0; k < c; ++k) {
    const float* src = scratch.data() + static_cast<size_t>(k) * hh * ww;
    float* out = dst + static_cast<size_t>(k) * th * tw;
    for (int r = 0; r < th; ++r) {
      const float* row = src + static_cast<size_t>(reflect101(r, hh)) * ww;
      float* o = out + static_cast<size_t>(r) * tw;
      if (ww == tw) {
        std::memcpy(o, row, sizeof(float) * tw);
      } else {
        for (int j = 0; j < tw; ++j) o[j] = row[cols[j]];
      }
    }
  }
}

// Argmax strip rows [0, n) into out rows [top, top + n) (with ``wsum``: the probability of the class at
// their pixels > 0 into ``confidence``, from the blended logits divided by the weight sum) and slide
// the strips up by n rows.
void finish_rows(std::vector<float>& strip, int k, int th, int sw, cv::Mat& out, int top, int end,
                 std::vector<float>* wsum = nullptr, cv::Mat* confidence = nullptr) {
  const int n = end - top;
  if (n <= 0) return;
  const size_t plane = static_cast<size_t>(th) * sw;
  std::vector<float> rows(static_cast<size_t>(k) * n * sw);
  for (int c = 0; c < k; ++c)
    std::memcpy(&rows[static_cast<size_t>(c) * n * sw], &strip[c * plane], sizeof(float) * n * sw);
  argmax_into(rows.data(), k, static_cast<size_t>(n) * sw, out.ptr<uint8_t>(top));
  if (wsum && confidence) {
    const size_t rplane = static_cast<size_t>(n) * sw;
    std::vector<float> blended(k);
    for (size_t i = 0; i < rplane; ++i) {
      if (!out.ptr<uint8_t>(top)[i]) continue;
      for (int c = 0; c < k; ++c) blended[c] = rows[c * rplane + i] / (*wsum)[i];
      confidence->ptr<float>(top)[i] = static_cast<float>(top_probability(blended.data(), k, 1, 0));
    }
    std::memmove(wsum->data(), wsum->data() + rplane, sizeof(float) * (th - n) * sw);
    std::fill(wsum->data() + static_cast<size_t>(th - n) * sw, wsum->data() + plane, 0.0f);
  }
  for (int c = 0; c < k; ++c) {
    float* p = &strip[c * plane];
    std::memmove(p, p + static_cast<size_t>(n) * sw, sizeof(float) * (th - n) * sw);
    std::fill(p + static_cast<size_t>(th - n) * sw, p + plane, 0.0f);
  }
}

}  // namespace

std::vector<int> tile_starts(int length, int tile, double overlap) {
  if (length <= tile) return {0};
  const int stride = std::max(1, tile - static_cast<int>(std::floor(tile * overlap + 0.5)));
  const long long n = (static_cast<long long>(length) - tile + stride - 1) / stride + 1;
  std::vector<int> starts;
  for (long long i = 0; i < n; ++i) starts.push_back(static_cast<int>(i * (length - tile) / (n - 1)));
  return starts;
}

cv::Mat tile_weights(int th, int tw) {
  auto axis = [](int t) {
    std::vector<double> g(t);
    for (int i = 0; i < t; ++i) {
      const double d = (i + 0.5 - t / 2.0) / (kSigmaScale * t);
      g[i] = std::exp(-0.5 * d * d);
    }
    return g;
  };
  const std::vector<double> gy = axis(th), gx = axis(tw);
  cv::Mat w(th, tw, CV_32FC1);
  for (int y = 0; y < th; ++y)
    for (int x = 0; x < tw; ++x) w.at<float>(y, x) = static_cast<float>(gy[y] * gx[x]);  // outer in float64, then float32
  return w;
}

double top_probability(const float* logits, int k, size_t plane, size_t i) {
  if (k == 1) return 1.0 / (1.0 + std::exp(-std::fabs(static_cast<double>(logits[i]))));
  float top = logits[i];
  for (int c = 1; c < k; ++c) top = std::max(top, logits[c * plane + i]);
  double total = 0.0;
  for (int c = 0; c < k; ++c) total += std::exp(static_cast<double>(logits[c * plane + i]) - top);
  return 1.0 / total;
}

void argmax_into(const float* logits, int k, size_t plane, uint8_t* out) {
  if (k == 1) {  // sigmoid head: class 1 where the logit is > 0
    for (size_t i = 0; i < plane; ++i) out[i] = logits[i] > 0.0f ? 1 : 0;
    return;
  }
  for (size_t i = 0; i < plane; ++i) {
    int best = 0;
    float v = logits[i];
    for (int c = 1; c < k; ++c) {
      const float u = logits[c * plane + i];
      if (u > v) v = u, best = c;  // ties: the lower id, as numpy
    }
    out[i] = static_cast<uint8_t>(best);
  }
}

cv::Mat tiled_class_map(const cv::Mat& image, const ModelMeta& meta, const Predictor& predict, const Tiling& tiling,
                        int tile_batch, cv::Mat* confidence) {
  const Tiling t = check_tiling(tiling.scale, tiling.overlap);
  if (tile_batch < 1) throw Error("tile_batch " + std::to_string(tile_batch) + " must be a positive integer");
  const int h = image.rows, w = image.cols;
  if (h < 1 || w < 1) throw Error("image of size " + std::to_string(h) + "x" + std::to_string(w) + " is empty");
  const int sh = std::max(1, static_cast<int>(std::floor(h * t.scale + 0.5)));
  const int sw = std::max(1, static_cast<int>(std::floor(w * t.scale + 0.5)));
  cv::Mat img = image;
  if (sh != h || sw != w) {
    if (img.channels() == 4) cv::cvtColor(image, img, cv::COLOR_BGRA2BGR);  // alpha dropped before resizing
    img = resize_image(img, cv::Size(sw, sh));
  }
  const int th = meta.input_h, tw = meta.input_w, k = meta.num_outputs(), c = meta.in_channels;
  const std::vector<int> ys = tile_starts(sh, th, t.overlap), xs = tile_starts(sw, tw, t.overlap);
  std::vector<std::pair<int, int>> tiles;
  for (int y : ys)
    for (int x : xs) tiles.emplace_back(y, x);
  const cv::Mat weights = tile_weights(th, tw);
  const size_t in_size = static_cast<size_t>(c) * th * tw, out_size = static_cast<size_t>(k) * th * tw;
  const size_t strip_plane = static_cast<size_t>(th) * sw;
  std::vector<float> strip(static_cast<size_t>(k) * strip_plane, 0.0f), inputs, logits, scratch;
  cv::Mat out(sh, sw, CV_8UC1);
  std::vector<float> wsum;  // the weight sums of the strip, for the confidence
  if (confidence) {
    *confidence = cv::Mat::zeros(sh, sw, CV_32FC1);
    wsum.assign(strip_plane, 0.0f);
  }
  std::vector<float>* ws = confidence ? &wsum : nullptr;
  int top = 0;
  for (size_t first = 0; first < tiles.size(); first += tile_batch) {
    const int n = static_cast<int>(std::min(tiles.size() - first, static_cast<size_t>(tile_batch)));
    inputs.assign(in_size * n, 0.0f);
    logits.assign(out_size * n, 0.0f);
    for (int i = 0; i < n; ++i)
      tile_input(img, tiles[first + i].first, tiles[first + i].second, th, tw, meta, &inputs[in_size * i], scratch);
    predict(inputs.data(), n, logits.data());
    for (int i = 0; i < n; ++i) {
      const auto [y, x] = tiles[first + i];
      if (y > top) {
        finish_rows(strip, k, th, sw, out, top, y, ws, confidence);
        top = y;
      }
      const int hh = std::min(th, sh - y), ww = std::min(tw, sw - x);
      if (ws)
        for (int r = 0; r < hh; ++r)
          for (int j = 0; j < ww; ++j) wsum[static_cast<size_t>(r) * sw + x + j] += weights.ptr<float>(r)[j];
      for (int ch = 0; ch < k; ++ch) {
        const float* src = &logits[out_size * i + static_cast<size_t>(ch) * th * tw];
        float* acc = &strip[ch * strip_plane];
        for (int r = 0; r < hh; ++r) {
          const float* wr = weights.ptr<float>(r);
          const float* s = src + static_cast<size_t>(r) * tw;
          float* a = acc + static_cast<size_t>(r) * sw + x;
          for (int j = 0; j < ww; ++j) {
            const float weighted = s[j] * wr[j];  // float32 product, then the float32 sum (numpy's order)
            a[j] += weighted;
          }
        }
      }
    }
  }
  finish_rows(strip, k, th, sw, out, top, sh, ws, confidence);
  if (sh == h && sw == w) return out;
  LetterboxTransform back;
  back.src_h = h, back.src_w = w, back.dst_h = sh, back.dst_w = sw, back.new_h = sh, back.new_w = sw;
  return unletterbox_mask(out, back);
}

}  // namespace unet
