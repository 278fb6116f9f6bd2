// dit::Predictor: an export directory -> masks, like dit_deploy.runtime.Predictor.
//
//   dit::Predictor p("exports/refcoco_vit_b");
//   dit::Result r = p.predict(rgb, width, height, "the man on the left");
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dit/image.hpp"
#include "dit/manifest.hpp"
#include "dit/tokenizer.hpp"

namespace dit {

struct Options {
  /// "fused" or "split"; empty = fused when the export has it, else split (as in Python).
  std::string layout;
  /// "fp32" (the export's `graphs`), "fp16" or "int8" (its "precisions", written by
  /// dit-deploy quantize): runs `<role>.<precision>.onnx`, or with backend "tensorrt"
  /// `<role>.<precision>.engine`. An export without that precision throws ArtifactError.
  std::string precision = "fp32";
  /// "onnxruntime" or "tensorrt" (native engines; only when built with DIT_WITH_TENSORRT).
  std::string backend = "onnxruntime";
  /// ONNX Runtime execution provider: "cpu", "cuda" or "tensorrt".
  std::string device = "cpu";
  int threads = 0;    ///< intra-op threads; 0 = ONNX Runtime's default
  int max_batch = 8;  ///< pairs run together by predict_batch
  /// Overrides the manifest's tokenizer Unicode version (see TokenizerOptions).
  std::string unicode_version;
  /// Pass order of the letterbox resize: Pillow >= 13 (default) or Pillow 10-12 (kLegacy), to
  /// match the Pillow of the Python side bit for bit (see resize_bilinear_pillow).
  PillowPassOrder resize_order = PillowPassOrder::kPillow13;
  /// TensorRT provider: where ONNX Runtime caches its engines ("" = no cache).
  std::string trt_cache_dir;
};

struct Result {
  int width = 0;               ///< of the input image
  int height = 0;
  std::vector<uint8_t> mask;   ///< height * width, 1 on the referred object
  float score = 0.0f;          ///< mean foreground probability; 0 when the mask is empty
  Letterbox letterbox;
  std::size_t area() const;    ///< foreground pixels
};

struct Request {
  ImageView image;
  std::string text;
};

/// Model inputs for a batch, exactly what the graphs receive.
struct PreparedBatch {
  int batch = 0;
  int size = 0;
  int max_tokens = 0;
  std::vector<float> image;             ///< (B, 3, S, S)
  std::vector<int64_t> input_ids;       ///< (B, L)
  std::vector<int64_t> attention_mask;  ///< (B, L)
  std::vector<Letterbox> letterboxes;
};

class Backend;  // internal

/// Thread-safe after construction: predict() holds no per-call state in the object.
class Predictor {
 public:
  /// Throws ArtifactError (bad export directory, precision not exported), InputError (bad
  /// option), BackendUnavailableError (backend/device).
  explicit Predictor(const std::string& export_dir, const Options& options = {});
  ~Predictor();
  Predictor(Predictor&&) noexcept;
  Predictor& operator=(Predictor&&) noexcept;
  Predictor(const Predictor&) = delete;
  Predictor& operator=(const Predictor&) = delete;

  /// Mask (original height x width) and score for one RGB image and one expression.
  /// Throws ImageError / TextError for unusable inputs.
  Result predict(const uint8_t* rgb, int width, int height, const std::string& text) const;
  Result predict(const ImageView& image, const std::string& text) const;
  /// Pairs run max_batch at a time; results in request order.
  std::vector<Result> predict_batch(const std::vector<Request>& requests) const;

  /// Tokenize + letterbox, no inference (what predict feeds the graphs).
  PreparedBatch prepare(const std::vector<Request>& requests) const;
  /// (B, 1, S/4, S/4) low-resolution logits for prepared inputs.
  std::vector<float> low_res_logits(const PreparedBatch& batch, int* h, int* w) const;

  const Manifest& manifest() const;
  const Tokenizer& tokenizer() const;
  const std::string& layout() const;
  /// "fp32", "fp16" or "int8", as in Options.
  const std::string& precision() const;
  /// The manifest's graph for each role of the layout at the precision (role -> spec).
  const std::map<std::string, GraphSpec>& graph_specs() const;
  /// e.g. "onnxruntime 1.32.0 (CPUExecutionProvider)".
  std::string backend_description() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Write a mask as an 8-bit grayscale PNG (0 / 255). Throws Error when the file cannot be written.
void save_mask_png(const std::string& path, const uint8_t* mask, int width, int height);

/// Library version, e.g. "0.1.0".
const char* version();

}  // namespace dit
