// The engine compatibility rules against the table the Python runtime is tested with
// (tests/fixtures/engine_compat_cases.json), and typed errors for malformed sidecars.
#include <nlohmann/json.hpp>
#include <string>

#include "check.hpp"
#include "fixture.hpp"
#include "dit/errors.hpp"
#include "engine_compat.hpp"

namespace {

nlohmann::json table() { return dit_test::fixture("engine_compat_cases.json"); }

nlohmann::json sidecar(const nlohmann::json& defaults, const nlohmann::json& engine) {
  nlohmann::json s = defaults;
  for (auto it = engine.begin(); it != engine.end(); ++it) s[it.key()] = it.value();
  s["engine_file"] = "dit_encoder.fp16.engine";
  s["precision"] = "fp16";
  return s;
}

bool any_contains(const std::vector<std::string>& texts, const std::string& needle) {
  for (const auto& t : texts) {
    if (t.find(needle) != std::string::npos) return true;
  }
  return false;
}

}  // namespace

TEST(every_case_of_the_shared_table) {
  const auto t = table();
  CHECK(t["cases"].size() >= 19);
  for (const auto& c : t["cases"]) {
    const auto facts = dit::engine_facts(sidecar(t["engine_defaults"], c["engine"]), "x.json");
    const auto& r = c["running"];
    dit::MachineFacts m{r["tensorrt_version"].get<std::string>(),
                        r["gpu_name"].get<std::string>(),
                        r["compute_capability"].get<std::string>(),
                        r["source_sha256"].is_null() ? "" : r["source_sha256"].get<std::string>()};
    const auto v = dit::engine_verdict(facts, m);
    const std::string verdict = c["verdict"];
    const std::string says = c.value("says", "");
    bool ok = verdict == "refuse" ? any_contains(v.problems, says)
                                  : v.problems.empty() && (verdict == "warn"
                                                               ? any_contains(v.warnings, says)
                                                               : v.warnings.empty());
    if (!ok) std::cerr << "  case: " << c["name"].get<std::string>() << "\n";
    CHECK(ok);
  }
}

TEST(version_of_getInferLibVersion) {
  CHECK_EQ(dit::inferlib_version_string(101303), std::string("10.13.3"));
  CHECK_EQ(dit::inferlib_version_string(110400), std::string("11.4.0"));
  CHECK(dit::parse_version("10.13.3.9") == std::make_tuple(10, 13, 3));
  CHECK(dit::parse_version("10.1") == std::make_tuple(10, 1, 0));
}

TEST(malformed_sidecars_are_artifact_errors_naming_the_field) {
  const auto t = table();
  auto base = sidecar(t["engine_defaults"], nlohmann::json::object());
  auto with = [&](const std::string& key, const nlohmann::json& value) {
    auto s = base;
    s[key] = value;
    return s;
  };
  CHECK_THROWS(dit::ArtifactError, dit::engine_facts(with("compute_capability", 9.0), "e.json"),
               "e.json: field 'compute_capability' must be a non-empty string, got 9.0 (number)");
  CHECK_THROWS(dit::ArtifactError,
               dit::engine_facts(with("compute_capability", "sm90"), "e.json"),
               "field 'compute_capability' must be a string \"major.minor\"");
  CHECK_THROWS(dit::ArtifactError,
               dit::engine_facts(with("version_compatible", "yes"), "e.json"),
               "field 'version_compatible' must be true or false");
  CHECK_THROWS(dit::ArtifactError, dit::engine_facts(with("build", nlohmann::json::array()), "e"),
               "field 'build' must be an object");
  CHECK_THROWS(dit::ArtifactError,
               dit::engine_facts(with("hardware_compatibility", "any"), "e.json"),
               "one of none, ampere_plus, same_compute_capability");
  auto missing = base;
  missing.erase("tensorrt_version");
  CHECK_THROWS(dit::ArtifactError, dit::engine_facts(missing, "e.json"),
               "missing field 'tensorrt_version'");
  CHECK_THROWS(dit::ArtifactError, dit::engine_facts(nlohmann::json::array(), "e.json"),
               "must hold a JSON object");
}

int main() { return dit_test::run_all(); }
