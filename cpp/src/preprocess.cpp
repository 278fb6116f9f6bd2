// The DIT letterbox (dit_deploy/preprocess.py): Pillow's bilinear resize, /255, ImageNet
// normalisation in float32, centred paste on a zero canvas. Bit-exact with the Python path.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "dit/errors.hpp"
#include "dit/image.hpp"

namespace dit {
namespace {

// Pillow's libImaging/Resample.c, 8 bits per channel: coefficients in double, normalised to
// 22-bit fixed point; accumulators start at 1 << 21 (rounding) and are clipped to [0, 255].
constexpr int kPrecisionBits = 32 - 8 - 2;

double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

struct Coeffs {
  int ksize = 0;
  std::vector<int> bounds;  // (xmin, count) per output pixel
  std::vector<int> k;       // out_size * ksize fixed-point weights
};

Coeffs precompute(int in_size, int out_size) {
  const float in0 = 0.0f, in1 = static_cast<float>(in_size);
  double scale = static_cast<double>(in1 - in0) / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = 1.0 * filterscale;  // bilinear support 1, widened when downscaling
  Coeffs c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.bounds.resize(static_cast<std::size_t>(out_size) * 2);
  c.k.assign(static_cast<std::size_t>(out_size) * c.ksize, 0);
  std::vector<double> w(static_cast<std::size_t>(c.ksize));
  for (int xx = 0; xx < out_size; ++xx) {
    double center = in0 + (xx + 0.5) * scale;
    double ww = 0.0;
    double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    for (int x = 0; x < xmax; ++x) {
      double v = bilinear_filter((x + xmin - center + 0.5) * ss);
      w[static_cast<std::size_t>(x)] = v;
      ww += v;
    }
    for (int x = 0; x < xmax; ++x) {
      double v = ww != 0.0 ? w[static_cast<std::size_t>(x)] / ww : w[static_cast<std::size_t>(x)];
      int fixed = v < 0 ? static_cast<int>(-0.5 + v * (1 << kPrecisionBits))
                        : static_cast<int>(0.5 + v * (1 << kPrecisionBits));
      c.k[static_cast<std::size_t>(xx) * c.ksize + x] = fixed;
    }
    c.bounds[static_cast<std::size_t>(xx) * 2] = xmin;
    c.bounds[static_cast<std::size_t>(xx) * 2 + 1] = xmax;
  }
  return c;
}

inline uint8_t clip8(int acc) {
  int v = acc >> kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

/// Python's round(): half to even (the default floating-point rounding mode).
int py_round(double v) { return static_cast<int>(std::nearbyint(v)); }

}  // namespace

Letterbox compute_letterbox(int height, int width, int size) {
  if (height <= 0 || width <= 0) {
    throw ImageError("image has zero size (" + std::to_string(height) + "x" +
                     std::to_string(width) + " pixels); pass a non-empty image.");
  }
  const double ratio = static_cast<double>(size) / static_cast<double>(std::max(height, width));
  Letterbox lb;
  lb.orig_h = height;
  lb.orig_w = width;
  lb.new_h = py_round(height * ratio);
  lb.new_w = py_round(width * ratio);
  lb.size = size;
  if (lb.new_h == 0 || lb.new_w == 0) {
    throw ImageError("image is " + std::to_string(height) + "x" + std::to_string(width) +
                     " pixels: its short side rounds to 0 when the long side is resized to " +
                     std::to_string(size) + "; crop or pad it to a less extreme aspect ratio.");
  }
  lb.top = py_round((size - lb.new_h) / 2.0 - 0.1);
  lb.left = py_round((size - lb.new_w) / 2.0 - 0.1);
  return lb;
}

Image resize_bilinear_pillow(const ImageView& image, int new_width, int new_height,
                             PillowPassOrder order) {
  const int W = image.width, H = image.height;
  const std::size_t stride = image.stride ? image.stride : static_cast<std::size_t>(W) * 3;
  if (W <= 0 || H <= 0 || new_width <= 0 || new_height <= 0 || image.rgb == nullptr) {
    throw InputError("resize needs a non-empty image and size");
  }
  // the source as rows of `cur_w` RGB pixels, replaced by each pass
  std::vector<uint8_t> cur;
  int cur_w = W, cur_h = H;
  cur.resize(static_cast<std::size_t>(W) * H * 3);
  for (int y = 0; y < H; ++y) {
    std::memcpy(&cur[static_cast<std::size_t>(y) * W * 3], image.rgb + y * stride,
                static_cast<std::size_t>(W) * 3);
  }
  auto horizontal = [&]() {
    Coeffs c = precompute(W, new_width);
    std::vector<uint8_t> out(static_cast<std::size_t>(new_width) * cur_h * 3);
    for (int y = 0; y < cur_h; ++y) {
      const uint8_t* row = &cur[static_cast<std::size_t>(y) * cur_w * 3];
      for (int xx = 0; xx < new_width; ++xx) {
        const int xmin = c.bounds[static_cast<std::size_t>(xx) * 2];
        const int xmax = c.bounds[static_cast<std::size_t>(xx) * 2 + 1];
        const int* k = &c.k[static_cast<std::size_t>(xx) * c.ksize];
        int s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
        for (int x = 0; x < xmax; ++x) {
          const uint8_t* p = row + static_cast<std::size_t>(x + xmin) * 3;
          s0 += p[0] * k[x];
          s1 += p[1] * k[x];
          s2 += p[2] * k[x];
        }
        uint8_t* o = &out[(static_cast<std::size_t>(y) * new_width + xx) * 3];
        o[0] = clip8(s0);
        o[1] = clip8(s1);
        o[2] = clip8(s2);
      }
    }
    cur.swap(out);
    cur_w = new_width;
  };
  auto vertical = [&]() {
    Coeffs c = precompute(H, new_height);
    std::vector<uint8_t> out(static_cast<std::size_t>(cur_w) * new_height * 3);
    for (int yy = 0; yy < new_height; ++yy) {
      const int ymin = c.bounds[static_cast<std::size_t>(yy) * 2];
      const int ymax = c.bounds[static_cast<std::size_t>(yy) * 2 + 1];
      const int* k = &c.k[static_cast<std::size_t>(yy) * c.ksize];
      for (int xx = 0; xx < cur_w; ++xx) {
        int s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
        for (int y = 0; y < ymax; ++y) {
          const uint8_t* p = &cur[(static_cast<std::size_t>(y + ymin) * cur_w + xx) * 3];
          s0 += p[0] * k[y];
          s1 += p[1] * k[y];
          s2 += p[2] * k[y];
        }
        uint8_t* o = &out[(static_cast<std::size_t>(yy) * cur_w + xx) * 3];
        o[0] = clip8(s0);
        o[1] = clip8(s1);
        o[2] = clip8(s2);
      }
    }
    cur.swap(out);
    cur_h = new_height;
  };
  // Pillow >= 13 runs the vertical pass first when the height shrinks by more than twice the
  // number of pixels the width does (to speed up the horizontal pass); older Pillow always ran
  // the horizontal pass first. The order changes the 8-bit rounding of the intermediate image.
  const bool horizontal_first = order == PillowPassOrder::kLegacy ||
                                !((H - new_height) > 0 && (H - new_height) > (W - new_width) * 2);
  if (horizontal_first) {
    if (new_width != W) horizontal();
    if (new_height != H) vertical();
  } else {
    if (new_height != H) vertical();
    if (new_width != W) horizontal();
  }
  Image result;
  result.width = cur_w;
  result.height = cur_h;
  result.rgb = std::move(cur);
  return result;
}

Letterbox letterbox(const ImageView& image, int size, const float mean[3], const float std[3],
                    float* out, PillowPassOrder order) {
  if (image.rgb == nullptr && image.width * image.height != 0) {
    throw ImageError("image pixels are null; pass RGB bytes");
  }
  Letterbox lb = compute_letterbox(image.height, image.width, size);
  Image resized;
  const uint8_t* px = image.rgb;
  std::size_t stride = image.stride ? image.stride : static_cast<std::size_t>(image.width) * 3;
  if (lb.new_h != image.height || lb.new_w != image.width) {
    resized = resize_bilinear_pillow(image, lb.new_w, lb.new_h, order);
    px = resized.rgb.data();
    stride = static_cast<std::size_t>(lb.new_w) * 3;
  }
  const std::size_t plane = static_cast<std::size_t>(size) * size;
  std::memset(out, 0, plane * 3 * sizeof(float));
  for (int c = 0; c < 3; ++c) {
    const float m = mean[c], s = std[c];
    float* dst = out + c * plane;
    for (int y = 0; y < lb.new_h; ++y) {
      const uint8_t* row = px + y * stride;
      float* d = dst + static_cast<std::size_t>(y + lb.top) * size + lb.left;
      for (int x = 0; x < lb.new_w; ++x) {
        float v = static_cast<float>(row[3 * x + c]) / 255.0f;
        d[x] = (v - m) / s;
      }
    }
  }
  return lb;
}

}  // namespace dit
