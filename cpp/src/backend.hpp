// Internal: one small interface over the inference engines (ONNX Runtime, TensorRT).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dit/manifest.hpp"
#include "dit/predictor.hpp"

namespace dit {

/// A host tensor: float32 or int64, row-major.
struct Tensor {
  enum class Type { kFloat32, kInt64 };
  Type type = Type::kFloat32;
  std::vector<int64_t> shape;
  std::vector<float> f32;
  std::vector<int64_t> i64;

  static Tensor floats(std::vector<int64_t> shape, std::vector<float> data);
  static Tensor ints(std::vector<int64_t> shape, std::vector<int64_t> data);
  std::size_t numel() const;
  const void* data() const;
  std::size_t bytes() const;
};

using TensorMap = std::map<std::string, Tensor>;

class Backend {
 public:
  virtual ~Backend() = default;
  /// Runs the graph on `feeds` (by input name); returns every output by name.
  virtual TensorMap run(const TensorMap& feeds) const = 0;
  virtual std::vector<std::string> input_names() const = 0;
  virtual std::string description() const = 0;
};

/// ONNX Runtime session over one .onnx graph (device: cpu, cuda[:N], tensorrt[:N]); `inputs`
/// (the manifest's specs) size the TensorRT provider's batch profile.
std::unique_ptr<Backend> open_onnxruntime(const std::string& graph_path, const Options& options,
                                          const std::vector<TensorSpec>& inputs = {});

/// Native TensorRT engine `<graph stem>.engine` with its `.engine.json` sidecar, refused when
/// the sidecar does not match this machine or `source_sha256` (the manifest's hash of the graph;
/// "" = not checked); throws BackendUnavailableError when built without TensorRT.
std::unique_ptr<Backend> open_tensorrt(const std::string& graph_path, const Options& options,
                                       const std::string& source_sha256);

}  // namespace dit
