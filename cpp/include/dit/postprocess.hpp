// From the decoder's low-resolution logits to a mask on the original image, identical to
// dit_deploy/postprocess.py.
#pragma once

#include <cstdint>
#include <vector>

#include "dit/image.hpp"

namespace dit {

/// x`factor` bilinear upsampling with align_corners=True (nn.UpsamplingBilinear2d) of one
/// (h, w) map; float32 positions and weights, float64 accumulation, float32 result.
std::vector<float> upsample_logits(const float* low_res, int h, int w, int factor = 4);

/// cv2.resize(INTER_LINEAR) of a float (h, w) map: half-pixel centres, edge clamping.
std::vector<float> resize_bilinear(const float* src, int h, int w, int out_h, int out_w);

/// Numerically stable logistic function in float32.
float sigmoid(float x);

struct MaskOutput {
  std::vector<uint8_t> mask;  ///< orig_h * orig_w, 1 = foreground
  float score = 0.0f;         ///< mean probability over foreground pixels (input resolution)
};

/// (size, size) logits at input resolution -> mask at the original resolution:
/// sigmoid > threshold, crop the letterbox, resize_bilinear, > 0.
MaskOutput logits_to_mask(const float* logits_full, const Letterbox& lb, float threshold);

}  // namespace dit
