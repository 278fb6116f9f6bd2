// Letterbox and Pillow-bilinear resize on known images (expected values from Pillow 10+).
#include <vector>

#include "check.hpp"
#include "dit/dit.hpp"

namespace {

dit::Image pattern(int w, int h) {
  dit::Image im;
  im.width = w;
  im.height = h;
  im.rgb.resize(static_cast<std::size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c)
        im.rgb[(static_cast<std::size_t>(y) * w + x) * 3 + c] =
            static_cast<uint8_t>((x * 37 + y * 91 + c * 53) % 256);
  return im;
}

const float kMean[3] = {0.485f, 0.456f, 0.406f};
const float kStd[3] = {0.229f, 0.224f, 0.225f};

void check_case(int w, int h, int S, dit::Letterbox want, const std::vector<int>& resized,
                float v0, float v1) {
  dit::Image im = pattern(w, h);
  dit::Letterbox lb = dit::compute_letterbox(h, w, S);
  CHECK_EQ(lb.new_h, want.new_h);
  CHECK_EQ(lb.new_w, want.new_w);
  CHECK_EQ(lb.top, want.top);
  CHECK_EQ(lb.left, want.left);
  dit::Image r = dit::resize_bilinear_pillow(im.view(), lb.new_w, lb.new_h);
  CHECK_EQ(r.rgb.size(), resized.size());
  for (std::size_t i = 0; i < resized.size() && i < r.rgb.size(); ++i) {
    if (r.rgb[i] != resized[i]) {
      CHECK_EQ(int(r.rgb[i]), resized[i]);
      break;
    }
  }
  std::vector<float> t(3 * static_cast<std::size_t>(S) * S, 123.0f);
  dit::letterbox(im.view(), S, kMean, kStd, t.data());
  const std::size_t plane = static_cast<std::size_t>(S) * S;
  CHECK_EQ(t[static_cast<std::size_t>(lb.top) * S + lb.left], v0);  // bit-exact
  CHECK_EQ(t[2 * plane + static_cast<std::size_t>(lb.top + 1) * S + lb.left + 1], v1);
  // zero padding after normalisation, everywhere outside the letterbox
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < S; ++y)
      for (int x = 0; x < S; ++x) {
        bool inside = y >= lb.top && y < lb.top + lb.new_h && x >= lb.left && x < lb.left + lb.new_w;
        if (!inside) CHECK_EQ(t[c * plane + static_cast<std::size_t>(y) * S + x], 0.0f);
      }
}

}  // namespace

TEST(downscale_wide_image) {
  check_case(10, 6, 8, {6, 10, 5, 8, 1, 0, 8},
             {28,  81,  134, 71,  124, 155, 115, 168, 167, 157, 172, 198, 160, 162, 75,  118, 53,
              106, 44,  97,  150, 87,  140, 152, 133, 163, 147, 138, 137, 122, 128, 181, 70,  162,
              100, 116, 71,  112, 165, 105, 158, 173, 149, 148, 163, 123, 153, 83,  109, 130, 87,
              99,  77,  130, 68,  121, 174, 114, 167, 121, 163, 186, 141, 156, 134, 134, 125, 103,
              103, 72,  93,  146, 84,  137, 190, 127, 180, 165, 171, 128, 113, 91,  106, 89,  102,
              134, 116, 110, 109, 162, 100, 153, 206, 143, 196, 126, 189, 191, 93,  148, 83,  114,
              74,  95,  126, 78,  119, 172, 115, 168, 174, 161, 214, 65,  205, 140, 109, 97,  99,
              111},
             -0x1.a36ee6p+0f, 0x1.49a4aep-2f);
}

TEST(upscale_small_image) {
  check_case(3, 2, 8, {2, 3, 5, 8, 1, 0, 8},
             {0,   53,  106, 2,   55,  108, 16,  69,  122, 30,  83,  136, 44,  97,  150, 58,  111,
              164, 72,  125, 178, 74,  127, 180, 9,   62,  115, 11,  64,  117, 25,  78,  131, 39,
              92,  145, 53,  106, 154, 67,  120, 159, 81,  134, 163, 83,  136, 164, 46,  99,  152,
              48,  101, 154, 62,  115, 168, 76,  129, 182, 90,  143, 172, 104, 157, 138, 118, 171,
              104, 120, 173, 98,  82,  135, 188, 84,  137, 190, 98,  151, 204, 112, 165, 218, 126,
              179, 189, 140, 193, 116, 154, 207, 44,  156, 209, 31,  91,  144, 197, 93,  146, 199,
              107, 160, 213, 121, 174, 227, 135, 188, 193, 149, 202, 111, 163, 216, 29,  165, 218,
              15},
             -0x1.0f177ap+1f, 0x1.e0cfc8p-3f);
}

TEST(downscale_tall_image_odd_sizes) {
  dit::Letterbox lb = dit::compute_letterbox(29, 13, 11);
  CHECK_EQ(lb.new_h, 11);
  CHECK_EQ(lb.new_w, 5);
  CHECK_EQ(lb.top, 0);
  CHECK_EQ(lb.left, 3);
  dit::Image r = dit::resize_bilinear_pillow(pattern(13, 29).view(), 5, 11);
  CHECK_EQ(int(r.rgb[0]), 101);
  CHECK_EQ(int(r.rgb[1]), 130);
  CHECK_EQ(int(r.rgb.back()), 138);
}

TEST(vertical_pass_first_like_pillow_13) {
  // height shrinks by far more than the width: Pillow >= 13 resizes vertically first
  dit::Image r = dit::resize_bilinear_pillow(pattern(29, 127).view(), 17, 98);
  const int head[6] = {43, 96, 147, 100, 153, 150};
  for (int i = 0; i < 6; ++i) CHECK_EQ(int(r.rgb[static_cast<std::size_t>(i)]), head[i]);
  CHECK_EQ(int(r.rgb[r.rgb.size() - 1]), 97);
  long long sum = 0;
  for (std::size_t i = 0; i < r.rgb.size(); ++i) {
    sum += static_cast<long long>(r.rgb[i]) * static_cast<long long>(i) % 1000003;
  }
  CHECK_EQ(sum, 1592923036LL);
}

TEST(python_round_half_to_even) {
  // 200 x 1 at size 100: the short side is round(0.5) = 0 in Python -> refused
  CHECK_THROWS(dit::ImageError, dit::compute_letterbox(200, 1, 100), "rounds to 0");
  // the long side already equals size: no resize, no rounding
  dit::Letterbox lb = dit::compute_letterbox(2, 3, 3);
  CHECK_EQ(lb.new_w, 3);
  CHECK_EQ(lb.new_h, 2);
  CHECK_THROWS(dit::ImageError, dit::compute_letterbox(0, 5, 8), "zero size");
}

TEST(same_size_is_not_resized) {
  dit::Image im = pattern(8, 4);
  std::vector<float> t(3 * 64);
  dit::Letterbox lb = dit::letterbox(im.view(), 8, kMean, kStd, t.data());
  CHECK_EQ(lb.top, 2);
  float want = (static_cast<float>(im.rgb[0]) / 255.0f - kMean[0]) / kStd[0];
  CHECK_EQ(t[2 * 8], want);
}

TEST(strided_view_equals_packed) {
  dit::Image im = pattern(10, 6);
  std::vector<uint8_t> padded(static_cast<std::size_t>(6) * 40, 7);
  for (int y = 0; y < 6; ++y)
    std::copy(im.rgb.begin() + y * 30, im.rgb.begin() + (y + 1) * 30, padded.begin() + y * 40);
  std::vector<float> a(3 * 64), b(3 * 64);
  dit::letterbox(im.view(), 8, kMean, kStd, a.data());
  dit::letterbox(dit::ImageView{padded.data(), 10, 6, 40}, 8, kMean, kStd, b.data());
  CHECK(a == b);
}

TEST_MAIN()
