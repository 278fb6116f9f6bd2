// Post-processing on known logits (expected values from dit_deploy/postprocess.py).
#include <string>
#include <vector>

#include "check.hpp"
#include "dit/dit.hpp"

TEST(upsample_align_corners) {
  const float lo[4] = {-1.0f, 2.0f, 0.5f, -3.0f};
  std::vector<float> up = dit::upsample_logits(lo, 2, 2, 4);
  CHECK_EQ(up.size(), 64u);
  CHECK_EQ(up[0 * 8 + 0], -0x1.0p+0f);
  CHECK_EQ(up[3 * 8 + 2], -0x1.2f053ap-2f);
  CHECK_EQ(up[5 * 8 + 6], -0x1.563442p+0f);
  CHECK_EQ(up[7 * 8 + 7], -0x1.8p+1f);
  CHECK_EQ(up[7 * 8 + 0], 0.5f);  // corners are the inputs
}

TEST(resize_half_pixel) {
  const float lo[9] = {-4, -1, 0.3f, 2, 1.5f, -0.2f, -0.6f, 3, -5};
  std::vector<float> r = dit::resize_bilinear(lo, 3, 3, 5, 4);
  const float want[20] = {-0x1p+2f,        -0x1.1p+1f,      -0x1.066666p-1f, 0x1.333334p-2f,
                          -0x1.99999cp+0f, -0x1.333334p-1f, 0x1.333334p-5f,  0x1.99999ap-4f,
                          0x1p+1f,         0x1.bp+0f,       0x1.b9999ap-1f,  -0x1.99999ap-3f,
                          0x1.c28f58p-2f,  0x1.aa3d7p+0f,   0x1.6147bp-2f,   -0x1.8a3d7p+1f,
                          -0x1.333334p-1f, 0x1.a66666p+0f,  0.0f,            -0x1.4p+2f};
  for (int i = 0; i < 20; ++i) CHECK_EQ(r[static_cast<std::size_t>(i)], want[i]);
}

TEST(logits_to_mask_known) {
  const float lo[9] = {-4, -1, 0.3f, 2, 1.5f, -0.2f, -0.6f, 3, -5};
  std::vector<float> up = dit::upsample_logits(lo, 3, 3, 4);
  dit::Letterbox lb;
  lb.orig_h = 7;
  lb.orig_w = 5;
  lb.new_h = 12;
  lb.new_w = 9;
  lb.top = 0;
  lb.left = 1;
  lb.size = 12;
  dit::MaskOutput m = dit::logits_to_mask(up.data(), lb, 0.35f);
  std::string bits;
  for (uint8_t v : m.mask) bits += v ? '1' : '0';
  CHECK_EQ(bits, std::string("00011111111111111111111111111111111"));
  CHECK_NEAR(m.score, 0.6778489947319031, 1e-6);
}

TEST(empty_mask_scores_zero) {
  std::vector<float> logits(16 * 16, -10.0f);
  dit::Letterbox lb{10, 20, 8, 16, 4, 0, 16};
  dit::MaskOutput m = dit::logits_to_mask(logits.data(), lb, 0.35f);
  CHECK_EQ(m.score, 0.0f);
  CHECK_EQ(m.mask.size(), 200u);
  for (uint8_t v : m.mask) CHECK_EQ(int(v), 0);
}

TEST(sigmoid_stable) {
  CHECK_EQ(dit::sigmoid(0.0f), 0.5f);
  CHECK(dit::sigmoid(-1000.0f) >= 0.0f);
  CHECK_EQ(dit::sigmoid(1000.0f), 1.0f);
}

TEST_MAIN()
