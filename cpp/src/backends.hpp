// The one table of the C++ runtime's backends, the twin of the Python runtime's
// dit_deploy.runtime.backends.table for the backends both runtimes have: each row's device
// kinds (the first is the default), precisions, artifact and whether the CPU's kernels decide
// its numerics. Both are tested against tests/fixtures/backend_table.json.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend.hpp"
#include "dit/manifest.hpp"
#include "dit/predictor.hpp"

namespace dit {

struct BackendRow {
  std::string name;
  std::vector<std::string> devices;     ///< device kinds (devices.hpp); the first is the default
  std::vector<std::string> precisions;  ///< what it runs
  std::string artifact;                 ///< "onnx": the graph file; "engine": built beside it
  bool cpu_numerics = false;            ///< the verified-on rule applies (cpu_numerics.hpp)
  /// Opens one graph: `path` is the graph file (an engine row derives its engine from it).
  std::unique_ptr<Backend> (*open)(const std::string& path, const Options& options,
                                   const GraphSpec& spec) = nullptr;
};

/// Every backend, in table order.
const std::vector<BackendRow>& backend_table();

/// The row of `name`; BackendUnavailableError naming the choices for an unknown one.
const BackendRow& backend_row(const std::string& name);

/// The layout an export runs when none is named: fused if exported, else split (the Python
/// runtime's Export.layout).
std::string default_layout(const std::vector<std::string>& available);

}  // namespace dit
