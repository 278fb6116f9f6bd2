// Low-resolution logits -> mask on the original image (dit_deploy/postprocess.py).
#include "dit/postprocess.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "dit/errors.hpp"

namespace dit {
namespace {

struct Tap {
  int i0, i1;
  double w0, w1;
};

/// align_corners=True taps with float32 scale, positions and weights (PyTorch's CPU kernel).
std::vector<Tap> align_corners_taps(int n_in, int n_out) {
  const float scale =
      n_out > 1 ? static_cast<float>(n_in - 1) / static_cast<float>(n_out - 1) : 0.0f;
  std::vector<Tap> taps(static_cast<std::size_t>(n_out));
  for (int j = 0; j < n_out; ++j) {
    const float src = scale * static_cast<float>(j);
    int i0 = std::min(static_cast<int>(src), n_in - 1);
    int i1 = std::min(i0 + 1, n_in - 1);
    float lam1 = std::min(std::max(src - static_cast<float>(i0), 0.0f), 1.0f);
    float lam0 = 1.0f - lam1;
    taps[static_cast<std::size_t>(j)] = {i0, i1, lam0, lam1};
  }
  return taps;
}

struct HalfTap {
  int i0, i1;
  float frac;
};

/// OpenCV INTER_LINEAR taps: positions in float64, weight rounded to float32, edges clamped.
std::vector<HalfTap> half_pixel_taps(int n_in, int n_out) {
  std::vector<HalfTap> taps(static_cast<std::size_t>(n_out));
  const double ratio = static_cast<double>(n_in) / static_cast<double>(n_out);
  for (int j = 0; j < n_out; ++j) {
    double src = (j + 0.5) * ratio - 0.5;
    double fl = std::floor(src);
    long long i0 = static_cast<long long>(fl);
    float frac = static_cast<float>(src - static_cast<double>(i0));
    if (i0 < 0) {
      frac = 0.0f;
      i0 = 0;
    }
    if (i0 >= n_in - 1) {
      i0 = n_in - 1;
      frac = 0.0f;
    }
    int a = static_cast<int>(i0);
    taps[static_cast<std::size_t>(j)] = {a, std::min(a + 1, n_in - 1), frac};
  }
  return taps;
}

}  // namespace

std::vector<float> upsample_logits(const float* low_res, int h, int w, int factor) {
  if (h <= 0 || w <= 0 || factor <= 0) {
    throw InputError("upsample_logits needs (h, w) with h, w > 0, got (" + std::to_string(h) +
                     ", " + std::to_string(w) + ")");
  }
  const int H = h * factor, W = w * factor;
  const auto rows = align_corners_taps(h, H);
  const auto cols = align_corners_taps(w, W);
  // rows @ x in float64, then @ cols.T, one rounding to float32 at the end (as numpy).
  std::vector<double> tmp(static_cast<std::size_t>(H) * w);
  for (int i = 0; i < H; ++i) {
    const Tap& t = rows[static_cast<std::size_t>(i)];
    for (int j = 0; j < w; ++j) {
      double a = static_cast<double>(low_res[static_cast<std::size_t>(t.i0) * w + j]);
      double b = static_cast<double>(low_res[static_cast<std::size_t>(t.i1) * w + j]);
      tmp[static_cast<std::size_t>(i) * w + j] =
          t.i0 == t.i1 ? (t.w0 + t.w1) * a : t.w0 * a + t.w1 * b;
    }
  }
  std::vector<float> out(static_cast<std::size_t>(H) * W);
  for (int i = 0; i < H; ++i) {
    const double* r = &tmp[static_cast<std::size_t>(i) * w];
    for (int j = 0; j < W; ++j) {
      const Tap& t = cols[static_cast<std::size_t>(j)];
      double v = t.i0 == t.i1 ? (t.w0 + t.w1) * r[t.i0] : t.w0 * r[t.i0] + t.w1 * r[t.i1];
      out[static_cast<std::size_t>(i) * W + j] = static_cast<float>(v);
    }
  }
  return out;
}

std::vector<float> resize_bilinear(const float* src, int h, int w, int out_h, int out_w) {
  if (h <= 0 || w <= 0 || out_h <= 0 || out_w <= 0) {
    throw InputError("resize_bilinear needs a non-empty 2-D array and a positive size");
  }
  const auto rt = half_pixel_taps(h, out_h);
  std::vector<float> rowsout(static_cast<std::size_t>(out_h) * w);
  for (int i = 0; i < out_h; ++i) {
    const HalfTap& t = rt[static_cast<std::size_t>(i)];
    const float w0 = 1.0f - t.frac, w1 = t.frac;
    for (int j = 0; j < w; ++j) {
      float a = src[static_cast<std::size_t>(t.i0) * w + j] * w0;
      float b = src[static_cast<std::size_t>(t.i1) * w + j] * w1;
      rowsout[static_cast<std::size_t>(i) * w + j] = a + b;
    }
  }
  const auto ct = half_pixel_taps(w, out_w);
  std::vector<float> out(static_cast<std::size_t>(out_h) * out_w);
  for (int i = 0; i < out_h; ++i) {
    const float* r = &rowsout[static_cast<std::size_t>(i) * w];
    for (int j = 0; j < out_w; ++j) {
      const HalfTap& t = ct[static_cast<std::size_t>(j)];
      float a = r[t.i0] * (1.0f - t.frac);
      float b = r[t.i1] * t.frac;
      out[static_cast<std::size_t>(i) * out_w + j] = a + b;
    }
  }
  return out;
}

float sigmoid(float x) {
  const float e = std::exp(-std::fabs(x));
  return x >= 0 ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

MaskOutput logits_to_mask(const float* logits_full, const Letterbox& lb, float threshold) {
  if (lb.new_h <= 0 || lb.new_w <= 0 || lb.top < 0 || lb.left < 0 ||
      lb.top + lb.new_h > lb.size || lb.left + lb.new_w > lb.size) {
    throw InputError("letterbox does not fit its canvas");
  }
  std::vector<float> fg(static_cast<std::size_t>(lb.new_h) * lb.new_w);
  double sum = 0.0;
  std::size_t count = 0;
  for (int y = 0; y < lb.new_h; ++y) {
    const float* row = logits_full + static_cast<std::size_t>(y + lb.top) * lb.size + lb.left;
    for (int x = 0; x < lb.new_w; ++x) {
      float p = sigmoid(row[x]);
      bool on = p > threshold;
      fg[static_cast<std::size_t>(y) * lb.new_w + x] = on ? 1.0f : 0.0f;
      if (on) {
        sum += p;
        ++count;
      }
    }
  }
  MaskOutput out;
  out.score = count ? static_cast<float>(sum / static_cast<double>(count)) : 0.0f;
  std::vector<float> resized = resize_bilinear(fg.data(), lb.new_h, lb.new_w, lb.orig_h, lb.orig_w);
  out.mask.resize(resized.size());
  for (std::size_t i = 0; i < resized.size(); ++i) out.mask[i] = resized[i] > 0.0f ? 1 : 0;
  return out;
}

}  // namespace dit
