// Engine sidecar checks shared with the Python runtime: see engine_compat.hpp.
#include "engine_compat.hpp"

#include <cctype>
#include <set>
#include <utility>

#include "dit/errors.hpp"

namespace dit {
namespace {

std::string field_error(const std::string& path, const std::string& field,
                        const std::string& expected, const nlohmann::json& got) {
  std::string text = got.dump();
  if (text.size() > 40) text = text.substr(0, 40);
  return path + ": field '" + field + "' must be " + expected + ", got " + text + " (" +
         got.type_name() + "); rebuild the engine";
}

std::string string_field(const nlohmann::json& j, const std::string& path,
                         const std::string& field, bool required = true) {
  if (!j.contains(field)) {
    if (!required) return "";
    throw ArtifactError(path + ": missing field '" + field + "'; rebuild the engine");
  }
  const auto& v = j.at(field);
  if (!v.is_string() || v.get<std::string>().empty()) {
    throw ArtifactError(field_error(path, field, "a non-empty string", v));
  }
  return v.get<std::string>();
}

std::pair<int, int> cc_of(const std::string& text) {
  const auto dot = text.find('.');
  const int major = std::stoi(text.substr(0, dot));
  const int minor = dot == std::string::npos ? 0 : std::stoi(text.substr(dot + 1));
  return {major, minor};
}

bool is_cc(const std::string& text) {
  const auto dot = text.find('.');
  if (dot == std::string::npos || dot == 0 || dot + 1 == text.size()) return false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (i != dot && !std::isdigit(static_cast<unsigned char>(text[i]))) return false;
  }
  return true;
}

}  // namespace

std::tuple<int, int, int> parse_version(const std::string& text) {
  int parts[3] = {0, 0, 0};
  int n = 0;
  std::size_t i = 0;
  while (i < text.size() && n < 3) {
    if (std::isdigit(static_cast<unsigned char>(text[i]))) {
      std::size_t j = i;
      while (j < text.size() && std::isdigit(static_cast<unsigned char>(text[j]))) ++j;
      parts[n++] = std::stoi(text.substr(i, j - i));
      i = j;
    } else {
      ++i;
    }
  }
  return {parts[0], parts[1], parts[2]};
}

std::string inferlib_version_string(int version) {
  return std::to_string(version / 10000) + "." + std::to_string((version / 100) % 100) + "." +
         std::to_string(version % 100);
}

EngineFacts engine_facts(const nlohmann::json& j, const std::string& path) {
  if (!j.is_object()) {
    throw ArtifactError(path + ": must hold a JSON object, got " +
                        std::string(j.type_name()) + "; rebuild the engine");
  }
  EngineFacts f;
  f.engine_file = string_field(j, path, "engine_file");
  f.source_onnx = string_field(j, path, "source_onnx");
  f.source_sha256 = string_field(j, path, "source_sha256");
  f.precision = string_field(j, path, "precision");
  f.tensorrt_version = string_field(j, path, "tensorrt_version");
  if (!std::isdigit(static_cast<unsigned char>(f.tensorrt_version[0])) ||
      f.tensorrt_version.find('.') == std::string::npos) {
    throw ArtifactError(field_error(path, "tensorrt_version",
                                    "a version string such as \"10.13.3.9\"",
                                    j.at("tensorrt_version")));
  }
  f.gpu_name = string_field(j, path, "gpu_name");
  f.compute_capability = string_field(j, path, "compute_capability");
  if (!is_cc(f.compute_capability)) {
    throw ArtifactError(field_error(path, "compute_capability",
                                    "a string \"major.minor\" such as \"9.0\"",
                                    j.at("compute_capability")));
  }
  const std::string hw = string_field(j, path, "hardware_compatibility", false);
  if (!hw.empty()) {
    if (hw != "none" && hw != "ampere_plus" && hw != "same_compute_capability") {
      throw ArtifactError(field_error(path, "hardware_compatibility",
                                      "one of none, ampere_plus, same_compute_capability",
                                      j.at("hardware_compatibility")));
    }
    f.hardware_compatibility = hw;
  }
  if (j.contains("version_compatible")) {
    if (!j.at("version_compatible").is_boolean()) {
      throw ArtifactError(
          field_error(path, "version_compatible", "true or false", j.at("version_compatible")));
    }
    f.version_compatible = j.at("version_compatible").get<bool>();
  }
  if (j.contains("build")) {
    const auto& b = j.at("build");
    if (!b.is_object()) throw ArtifactError(field_error(path, "build", "an object", b));
    if (b.contains("command") && b.at("command").is_string()) {
      f.rebuild_command = b.at("command").get<std::string>();
    }
  }
  return f;
}

EngineVerdict engine_verdict(const EngineFacts& engine, const MachineFacts& machine) {
  EngineVerdict v;
  if (!machine.tensorrt_version.empty()) {
    const auto b = parse_version(engine.tensorrt_version);
    const auto r = parse_version(machine.tensorrt_version);
    if (engine.version_compatible) {
      static const std::set<std::pair<int, int>> majors = {{10, 10}, {11, 11}, {10, 11}};
      if (!majors.count({std::get<0>(b), std::get<0>(r)}) || r < b) {
        v.problems.push_back("TensorRT " + machine.tensorrt_version +
                             " cannot run a version-compatible engine built with TensorRT " +
                             engine.tensorrt_version +
                             " (needs the same or a supported later major, not older)");
      }
    } else if (b != r) {
      v.problems.push_back("built with TensorRT " + engine.tensorrt_version +
                           ", running TensorRT " + machine.tensorrt_version);
    }
  }
  if (!machine.compute_capability.empty()) {
    const auto cc = cc_of(machine.compute_capability);
    if (engine.hardware_compatibility == "ampere_plus") {
      if (cc < std::make_pair(8, 0)) {
        v.problems.push_back("an Ampere-plus engine needs compute capability >= 8.0, this GPU (" +
                             machine.gpu_name + ") has " + machine.compute_capability);
      }
    } else if (cc != cc_of(engine.compute_capability)) {
      v.problems.push_back("built for compute capability " + engine.compute_capability + " (" +
                           engine.gpu_name + "), this GPU (" + machine.gpu_name + ") has " +
                           machine.compute_capability);
    } else if (engine.hardware_compatibility == "none" && !machine.gpu_name.empty() &&
               machine.gpu_name != engine.gpu_name) {
      v.warnings.push_back("built on " + engine.gpu_name + ", running on " + machine.gpu_name +
                           " (same compute capability: TensorRT runs it but warns; rebuild here "
                           "for the best tactics)");
    }
  }
  if (!machine.source_sha256.empty() && machine.source_sha256 != engine.source_sha256) {
    v.problems.push_back("built from another version of " + engine.source_onnx + " (sha256 " +
                         engine.source_sha256.substr(0, 12) + "..., the export has " +
                         machine.source_sha256.substr(0, 12) + "...)");
  }
  return v;
}

}  // namespace dit
