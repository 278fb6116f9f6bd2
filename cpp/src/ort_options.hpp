// ONNX Runtime's TensorRT provider options for a graph of one precision, the same keys and
// values as dit_deploy/runtime/backends/onnxruntime.py's tensorrt_provider_options (both are
// tested against tests/fixtures/ort_tensorrt_options.json).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "dit/manifest.hpp"

namespace dit {

/// (key, value) in the order the C API takes them: engine/timing cache in `cache`, FP16 only
/// for fp16 graphs and INT8 only for Q/DQ graphs (a weakly typed network would otherwise run
/// the FP32 layers of the verified graph in FP16), and one profile over the batch axis
/// (1, max_batch / 2, max_batch) of `inputs` (empty: no explicit profile).
std::vector<std::pair<std::string, std::string>> tensorrt_provider_options(
    const std::string& precision, const std::vector<TensorSpec>& inputs, const std::string& cache,
    int max_batch);

}  // namespace dit
