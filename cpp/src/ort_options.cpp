// See ort_options.hpp.
#include "ort_options.hpp"

#include <algorithm>

namespace dit {

std::vector<std::pair<std::string, std::string>> tensorrt_provider_options(
    const std::string& precision, const std::vector<TensorSpec>& inputs, const std::string& cache,
    int max_batch) {
  std::vector<std::pair<std::string, std::string>> out = {
      {"trt_engine_cache_enable", "1"},
      {"trt_engine_cache_path", cache},
      {"trt_timing_cache_enable", "1"},
      {"trt_timing_cache_path", cache},
      {"trt_fp16_enable", precision == "fp16" ? "1" : "0"},
      {"trt_int8_enable", precision == "int8" ? "1" : "0"},
  };
  if (inputs.empty()) return out;
  const int opt = std::max(1, max_batch / 2);
  const std::pair<const char*, int> profiles[] = {{"min", 1}, {"opt", opt}, {"max", max_batch}};
  for (const auto& [key, batch] : profiles) {
    std::string text;
    for (const auto& spec : inputs) {
      text += (text.empty() ? "" : ",") + spec.name + ":";
      for (std::size_t i = 0; i < spec.shape.size(); ++i) {
        const long long d = spec.shape[i] < 0 ? batch : spec.shape[i];  // -1: the batch axis
        text += (i ? "x" : "") + std::to_string(d);
      }
    }
    out.emplace_back(std::string("trt_profile_") + key + "_shapes", text);
  }
  return out;
}

}  // namespace dit
