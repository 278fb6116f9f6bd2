// manifest.json of an export directory (dit_deploy/runtime/manifest.py, manifest_version 1).
#pragma once

#include <map>
#include <string>
#include <vector>

namespace dit {

struct TensorSpec {
  std::string name;
  std::string dtype;               ///< numpy name: float32, float16, int64
  std::vector<long long> shape;    ///< -1 marks the dynamic ("batch") axis
};

struct GraphSpec {
  std::string file;
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  std::string sha256;
  std::string precision = "fp32";
  std::string execution;  ///< e.g. "openvino-bf16": the graph run at another precision
};

/// One "verified on" entry of a precision (manifest "verified"/<precision>/"on").
struct VerifiedOn {
  std::string numerics;  ///< the numerics class, e.g. "x86-int8-exact"
  std::string kernels;   ///< the CPU's kernel family, e.g. "x86-avx512-vnni"
};

/// A precision's verification record: how its graphs were made (scheme.weight_bits; 8 when
/// absent) and the machines it was verified on. `present` is false without a record.
struct VerifiedRecord {
  bool present = false;
  int weight_bits = 8;
  std::vector<VerifiedOn> on;
};

/// The one table of layouts (as runtime/manifest.py's LAYOUT_ROLES): each layout's graph
/// roles in the order they run. A graph takes its inputs by name from the prepared feeds and
/// the outputs of the graphs before it, so a new layout is one entry here.
const std::vector<std::pair<std::string, std::vector<std::string>>>& layout_roles();

struct Manifest {
  std::string directory;  ///< the export directory it was read from
  std::string config_name;
  std::string variant;
  int input_size = 0;
  int max_tokens = 0;
  float mask_threshold = 0.35f;
  float pixel_mean[3] = {0, 0, 0};
  float pixel_std[3] = {1, 1, 1};
  std::string vocab_file;
  bool lowercase = true;
  int tokenizer_max_tokens = 0;
  std::string unicode_version;  ///< tokenizer.unicode_version or versions.unicode, when present
  std::map<std::string, GraphSpec> graphs;  ///< role -> graph, FP32
  /// Extra graphs by precision ("fp16", "int8"): precision -> role -> graph, written by
  /// export/quantize.py under "precisions". Empty for an export without them. A role kept FP32
  /// (quantize.py --keep-fp32) points at the FP32 file.
  std::map<std::string, std::map<std::string, GraphSpec>> precisions;
  /// precision -> what it was verified on ("verified"; see dit_deploy/runtime/verified_on.py).
  std::map<std::string, VerifiedRecord> verified;
  int manifest_version = 0;

  /// "split" and/or "fused", the layouts whose (FP32) graphs are all present.
  std::vector<std::string> layouts() const;
  /// "fp32" then the precisions listed under "precisions", sorted: what graph() accepts.
  std::vector<std::string> precision_names() const;
  /// The graph that runs `role` at `precision` ("fp32" = `graphs`), as manifest.py's
  /// Manifest.graph. Throws ArtifactError naming the export directory, the precisions it has and
  /// the command that creates the missing ones (dit-deploy quantize DIR --precision P).
  const GraphSpec& graph(const std::string& role, const std::string& precision = "fp32") const;
  std::string path(const std::string& file) const;
};

constexpr int kManifestVersion = 1;

/// Read and check an export directory's manifest (files it names must exist, those of every
/// precision too).
/// Throws ArtifactError naming the file and the fix.
Manifest read_manifest(const std::string& directory);

}  // namespace dit
