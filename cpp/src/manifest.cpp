// manifest.json reader (nlohmann-json), with the checks and messages of manifest.py.
#include <algorithm>
#include "dit/manifest.hpp"

#include <sys/stat.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "dit/errors.hpp"

namespace dit {
namespace {

using nlohmann::json;

bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::vector<TensorSpec> tensor_specs(const json& list) {
  std::vector<TensorSpec> out;
  for (const json& t : list) {
    TensorSpec s;
    s.name = t.at("name").get<std::string>();
    s.dtype = t.at("dtype").get<std::string>();
    for (const json& d : t.at("shape")) {
      s.shape.push_back(d.is_number_integer() ? d.get<long long>() : -1);
    }
    out.push_back(std::move(s));
  }
  return out;
}

/// `table` (role -> graph) of manifest `path`; `what` names it in errors ("graphs", ...).
std::map<std::string, GraphSpec> graph_table(const json& table, const std::string& path,
                                             const std::string& what) {
  if (!table.is_object()) {
    throw ArtifactError(path + " is malformed (" + what + " must be an object of role -> graph, "
                        "not " + table.type_name() + "); re-export");
  }
  std::map<std::string, GraphSpec> out;
  for (const auto& item : table.items()) {
    const json& g = item.value();
    GraphSpec spec;
    spec.file = g.at("file").get<std::string>();
    spec.inputs = tensor_specs(g.at("inputs"));
    spec.outputs = tensor_specs(g.at("outputs"));
    spec.sha256 = g.value("sha256", std::string());
    spec.precision = g.value("precision", std::string("fp32"));
    spec.execution = g.value("execution", std::string());
    out[item.key()] = std::move(spec);
  }
  return out;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

}  // namespace

std::vector<std::string> Manifest::precision_names() const {
  std::vector<std::string> names{"fp32"};
  for (const auto& kv : precisions) {  // std::map: sorted, as manifest.py's sorted()
    if (kv.first != "fp32") names.push_back(kv.first);
  }
  return names;
}

const GraphSpec& Manifest::graph(const std::string& role, const std::string& precision) const {
  const std::map<std::string, GraphSpec>* table = nullptr;
  if (precision == "fp32") {
    table = &graphs;
  } else {
    auto it = precisions.find(precision);
    if (it == precisions.end()) {
      throw ArtifactError(directory + " has no " + precision + " graphs (has: " +
                          join(precision_names()) + "); create them with: dit-deploy "
                          "quantize " + directory + " --precision " + precision);
    }
    table = &it->second;
  }
  auto g = table->find(role);
  if (g == table->end()) {
    throw ArtifactError(
        directory + " has no " + precision + " graph for '" + role + "'; " +
        (precision == "fp32" ? "re-export it (dit-deploy export ...)"
                             : "re-run: dit-deploy quantize " + directory +
                                   " --precision " + precision));
  }
  if (!g->second.execution.empty()) {
    // e.g. bf16 = the FP32 graph executed in BF16 by OpenVINO: ONNX Runtime would silently
    // run it in FP32, so refuse rather than mislabel
    throw BackendUnavailableError(
        precision + " is an execution precision (" + g->second.execution + ") that this C++ "
        "runtime (ONNX Runtime) cannot provide; use the Python runtime: Predictor(\"" +
        directory + "\", backend=\"openvino\", precision=\"" + precision + "\")");
  }
  return g->second;
}

const std::vector<std::pair<std::string, std::vector<std::string>>>& layout_roles() {
  static const std::vector<std::pair<std::string, std::vector<std::string>>> table = {
      {"split", {"text_encoder", "dit_encoder", "mask_decoder"}},
      {"fused", {"dit_fused"}},
  };
  return table;
}

std::vector<std::string> Manifest::layouts() const {
  std::vector<std::string> found;
  for (const auto& [layout, roles] : layout_roles()) {
    if (std::all_of(roles.begin(), roles.end(), [&](const auto& r) { return graphs.count(r); })) {
      found.push_back(layout);
    }
  }
  return found;
}

std::string Manifest::path(const std::string& file) const { return directory + "/" + file; }

Manifest read_manifest(const std::string& directory) {
  if (!is_dir(directory)) {
    throw ArtifactError("export directory not found: " + directory);
  }
  const std::string path = directory + "/manifest.json";
  if (!is_file(path)) {
    throw ArtifactError(directory +
                        " has no manifest.json: it is not a dit-deploy export directory. Create "
                        "one with: dit-deploy export --out " +
                        directory);
  }
  json data;
  {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    try {
      data = json::parse(ss.str());
    } catch (const json::exception& exc) {
      throw ArtifactError(path + " is not valid JSON (" + exc.what() + "); re-export the model");
    }
  }
  json version = data.is_object() && data.contains("manifest_version") ? data["manifest_version"]
                                                                        : json();
  if (!version.is_number_integer() || version.get<long long>() != kManifestVersion) {
    throw ArtifactError(path + " has manifest version " +
                        (version.is_null() ? std::string("None") : version.dump()) +
                        ", this dit runtime reads version " + std::to_string(kManifestVersion) +
                        "; re-export with this version (dit-deploy export ...)");
  }
  Manifest m;
  m.directory = directory;
  try {
    m.manifest_version = version.get<int>();
    m.config_name = data.at("config_name").get<std::string>();
    m.variant = data.value("variant", std::string());
    m.input_size = data.at("input_size").get<int>();
    m.max_tokens = data.at("max_tokens").get<int>();
    m.mask_threshold = data.at("mask_threshold").get<float>();
    const json& mean = data.at("pixel_mean");
    const json& stdv = data.at("pixel_std");
    if (mean.size() != 3 || stdv.size() != 3) {
      throw ArtifactError(path + ": pixel_mean and pixel_std must have 3 values; re-export");
    }
    for (int c = 0; c < 3; ++c) {
      m.pixel_mean[c] = mean.at(static_cast<std::size_t>(c)).get<float>();
      m.pixel_std[c] = stdv.at(static_cast<std::size_t>(c)).get<float>();
    }
    const json& tok = data.at("tokenizer");
    m.vocab_file = tok.value("vocab_file", std::string("vocab.txt"));
    m.lowercase = tok.at("lowercase").get<bool>();
    m.tokenizer_max_tokens = tok.at("max_tokens").get<int>();
    if (tok.contains("unicode_version") && tok["unicode_version"].is_string()) {
      m.unicode_version = tok["unicode_version"].get<std::string>();
    } else if (data.contains("versions") && data["versions"].is_object() &&
               data["versions"].contains("unicode") && data["versions"]["unicode"].is_string()) {
      m.unicode_version = data["versions"]["unicode"].get<std::string>();
    }
    m.graphs = graph_table(data.at("graphs"), path, "\"graphs\"");
    // optional (exports never quantized have none): precision -> role -> graph
    if (data.contains("precisions") && !data["precisions"].is_null()) {
      const json& precisions = data["precisions"];
      if (!precisions.is_object()) {
        throw ArtifactError(path + " is malformed (\"precisions\" must be an object of "
                            "precision -> graphs, not " + precisions.type_name() +
                            "); re-run dit-deploy quantize");
      }
      for (const auto& item : precisions.items()) {
        m.precisions[item.key()] =
            graph_table(item.value(), path, "\"precisions\": \"" + item.key() + "\"");
      }
    }
    if (data.contains("verified") && data["verified"].is_object()) {
      for (const auto& item : data["verified"].items()) {
        VerifiedRecord record;
        record.present = true;
        const json& scheme = item.value().at("scheme");
        if (scheme.contains("weight_bits")) record.weight_bits = scheme.at("weight_bits").get<int>();
        for (const auto& on : item.value().at("on")) {
          record.on.push_back(
              {on.at("numerics").get<std::string>(), on.at("kernels").get<std::string>()});
        }
        m.verified[item.key()] = record;
      }
    }
  } catch (const json::exception& exc) {
    throw ArtifactError(path + " is incomplete or malformed (" + exc.what() + "); re-export");
  }
  if (m.input_size <= 0 || m.input_size % 4 != 0 || m.max_tokens < 3 ||
      m.tokenizer_max_tokens != m.max_tokens) {
    throw ArtifactError(path + " has inconsistent sizes (input_size " +
                        std::to_string(m.input_size) + ", max_tokens " +
                        std::to_string(m.max_tokens) + ", tokenizer.max_tokens " +
                        std::to_string(m.tokenizer_max_tokens) + "); re-export");
  }
  for (int c = 0; c < 3; ++c) {
    if (!(m.pixel_std[c] > 0.0f)) {
      throw ArtifactError(path + ": pixel_std must be positive; re-export");
    }
  }
  // the export is self-contained: every file it names is a plain name in its directory
  // (the Python reader's rule, runtime/manifest.py _own_file)
  auto own_file = [&](const std::string& name, const std::string& what) {
    if (name.empty() || name == "." || name == ".." ||
        name.find_first_of("/\\") != std::string::npos) {
      throw ArtifactError(path + " names " + what + " '" + name +
                          "', which is not a file of the export directory (a plain file name, "
                          "no path); re-export the model");
    }
  };
  own_file(m.vocab_file, "its vocabulary");
  for (const auto& [role, graph] : m.graphs) own_file(graph.file, "graph");
  for (const auto& [precision, table] : m.precisions) {
    for (const auto& [role, graph] : table) own_file(graph.file, "graph");
  }
  if (!is_file(m.path(m.vocab_file))) {
    throw ArtifactError(directory + " is missing its tokenizer vocabulary " + m.vocab_file +
                        "; copy the model's vocab.txt there or re-export");
  }
  for (const auto& [role, graph] : m.graphs) {
    if (!is_file(m.path(graph.file))) {
      throw ArtifactError(directory + " is missing graph " + graph.file + " (" + role +
                          "); re-export");
    }
  }
  for (const auto& [precision, table] : m.precisions) {
    for (const auto& [role, graph] : table) {
      if (!is_file(m.path(graph.file))) {
        throw ArtifactError(directory + " is missing " + precision + " graph " + graph.file +
                            " (" + role + "); re-run dit-deploy quantize " + directory +
                            " --precision " + precision);
      }
    }
  }
  return m;
}

}  // namespace dit
