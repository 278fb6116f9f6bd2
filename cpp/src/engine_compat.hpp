// Internal: the engine sidecar's compatibility rules, the same as Python's
// dit_deploy.runtime.engine_sidecar.engine_verdict (both run tests/fixtures/engine_compat_cases.json).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <vector>

namespace dit {

/// What a sidecar says an engine was built with and for.
struct EngineFacts {
  std::string engine_file;
  std::string source_onnx;
  std::string source_sha256;
  std::string tensorrt_version;
  std::string gpu_name;
  std::string compute_capability;  // "9.0"
  std::string hardware_compatibility = "none";
  bool version_compatible = false;
  std::string precision;
  std::string rebuild_command;  // build.command, when recorded
};

/// This machine; an empty string is "not known here" (that fact is not judged).
struct MachineFacts {
  std::string tensorrt_version;
  std::string gpu_name;
  std::string compute_capability;
  std::string source_sha256;  // the export's hash of the graph
};

struct EngineVerdict {
  std::vector<std::string> problems;  // TensorRT would refuse the engine
  std::vector<std::string> warnings;  // TensorRT runs it but warns
};

/// The sidecar's fields, type-checked; ArtifactError names `path`, the field and what was
/// expected (never a json type_error).
EngineFacts engine_facts(const nlohmann::json& sidecar, const std::string& path);

/// TensorRT's rules: see engine_sidecar.py's module doc.
EngineVerdict engine_verdict(const EngineFacts& engine, const MachineFacts& machine);

/// "10.13.3.9" -> {10, 13, 3}: TensorRT ties plans to major.minor.patch.
std::tuple<int, int, int> parse_version(const std::string& text);

/// getInferLibVersion() (major * 10000 + minor * 100 + patch) -> "major.minor.patch".
std::string inferlib_version_string(int version);

}  // namespace dit
