// The C++ backend table against the one the Python runtime is tested with
// (tests/fixtures/backend_table.json): the same rows for the backends both have.
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "backends.hpp"
#include "check.hpp"
#include "dit/errors.hpp"
#include "fixture.hpp"

TEST(every_row_of_the_shared_table) {
  const auto t = dit_test::fixture("backend_table.json");
  CHECK_EQ(t["rows"].size(), dit::backend_table().size());
  for (const auto& r : t["rows"]) {
    const dit::BackendRow& row = dit::backend_row(r["name"].get<std::string>());
    CHECK(row.devices == r["devices"].get<std::vector<std::string>>());
    CHECK(row.precisions == r["precisions"].get<std::vector<std::string>>());
    CHECK_EQ(row.artifact, r["artifact"].get<std::string>());
    CHECK_EQ(row.cpu_numerics, r["cpu_numerics"].get<bool>());
    CHECK(row.open != nullptr);
  }
  CHECK_THROWS(dit::BackendUnavailableError, dit::backend_row("openvino"),
               "choose onnxruntime or tensorrt");
}

TEST(default_layout_prefers_fused) {
  const auto t = dit_test::fixture("backend_table.json");
  for (const auto& c : t["default_layout"]) {
    CHECK_EQ(dit::default_layout(c["available"].get<std::vector<std::string>>()),
             c["layout"].get<std::string>());
  }
}

int main() { return dit_test::run_all(); }
