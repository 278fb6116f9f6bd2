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
};

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
  std::map<std::string, GraphSpec> graphs;  ///< role -> graph
  int manifest_version = 0;

  /// "split" and/or "fused", the layouts whose graphs are all present.
  std::vector<std::string> layouts() const;
  std::string path(const std::string& file) const;
};

constexpr int kManifestVersion = 1;

/// Read and check an export directory's manifest (files it names must exist).
/// Throws ArtifactError naming the file and the fix.
Manifest read_manifest(const std::string& directory);

}  // namespace dit
