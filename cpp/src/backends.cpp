// The backend table (backends.hpp).
#include "backends.hpp"

#include <algorithm>

#include "dit/errors.hpp"

namespace dit {

namespace {

std::unique_ptr<Backend> open_onnxruntime_row(const std::string& path, const Options& options,
                                              const GraphSpec& spec) {
  return open_onnxruntime(path, options, spec.inputs);
}

std::unique_ptr<Backend> open_tensorrt_row(const std::string& path, const Options& options,
                                           const GraphSpec& spec) {
  return open_tensorrt(path, options, spec.sha256);
}

}  // namespace

const std::vector<BackendRow>& backend_table() {
  static const std::vector<BackendRow> table{
      {"onnxruntime", {"cpu", "cuda", "tensorrt"}, {"fp32", "fp16", "int8"}, "onnx", true,
       &open_onnxruntime_row},
      {"tensorrt", {"cuda"}, {"fp32", "fp16", "int8"}, "engine", false, &open_tensorrt_row},
  };
  return table;
}

const BackendRow& backend_row(const std::string& name) {
  const auto& table = backend_table();
  const auto found = std::find_if(table.begin(), table.end(),
                                  [&](const BackendRow& row) { return row.name == name; });
  if (found == table.end()) {
    std::string names;
    for (const auto& row : table) names += (names.empty() ? "" : " or ") + row.name;
    throw BackendUnavailableError("unknown backend '" + name + "'; choose " + names);
  }
  return *found;
}

std::string default_layout(const std::vector<std::string>& available) {
  for (const char* preferred : {"fused", "split"}) {
    if (std::find(available.begin(), available.end(), preferred) != available.end()) {
      return preferred;
    }
  }
  return "split";
}

}  // namespace dit
