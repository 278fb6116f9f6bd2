// Image decoding and the DIT letterbox, identical to dit_deploy/preprocess.py.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace dit {

/// Pixels the library does not own: interleaved 8-bit RGB, row-major, `stride` bytes a row
/// (0 = width * 3).
struct ImageView {
  const uint8_t* rgb = nullptr;
  int width = 0;
  int height = 0;
  std::size_t stride = 0;
};

/// An owned 8-bit RGB image (height * width * 3 bytes).
struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;
  ImageView view() const { return ImageView{rgb.data(), width, height, 0}; }
};

constexpr long long kDefaultMaxPixels = 100000000;  // decompression-bomb guard, as in Python

/// Decode a PNG or JPEG file to 8-bit RGB the way dit_deploy.preprocess.load_image does: EXIF
/// orientation applied; gray replicated; alpha dropped (not composited); palette expanded;
/// 16-bit -> value >> 8; CMYK JPEG converted as Pillow does.
/// Throws ImageError (missing, corrupt, truncated, unsupported format, too many pixels).
Image load_image(const std::string& path, long long max_pixels = kDefaultMaxPixels);
/// Same, from an encoded file held in memory; `what` names it in error messages.
Image decode_image(const uint8_t* data, std::size_t size, const std::string& what,
                   long long max_pixels = kDefaultMaxPixels);

/// Where the resized image sits on the size x size canvas (dit_deploy.preprocess.Letterbox).
struct Letterbox {
  int orig_h = 0, orig_w = 0, new_h = 0, new_w = 0, top = 0, left = 0, size = 0;
};

/// (new_h, new_w) with the long side = size, rounded half to even like Python's round().
/// Throws ImageError for an empty image or a short side that rounds to 0.
Letterbox compute_letterbox(int height, int width, int size);

/// Order of the two passes: Pillow >= 13 (the default) may run the vertical pass first; Pillow
/// 10-12 always ran the horizontal one first. Results differ by at most 1 in a few pixels.
enum class PillowPassOrder { kPillow13, kLegacy };

/// Pillow's Image.resize(..., BILINEAR) for 8-bit RGB: antialiased (support scaled by the
/// downscale factor), precomputed coefficients, 22-bit fixed point, horizontal then vertical.
Image resize_bilinear_pillow(const ImageView& image, int new_width, int new_height,
                             PillowPassOrder order = PillowPassOrder::kPillow13);

/// Long side -> size with Pillow bilinear, /255, (x - mean) / std in float32, centred on a zero
/// canvas. Writes 3 * size * size floats (CHW) to `out`.
Letterbox letterbox(const ImageView& image, int size, const float mean[3], const float std[3],
                    float* out, PillowPassOrder order = PillowPassOrder::kPillow13);

}  // namespace dit
