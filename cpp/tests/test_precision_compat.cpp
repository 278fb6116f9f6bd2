// The verified-on rule of CPU precisions against the table the Python runtime is tested with
// (tests/fixtures/precision_compat_cases.json): C++ refuses wherever Python would re-verify.
#include <nlohmann/json.hpp>
#include <string>

#include "check.hpp"
#include "fixture.hpp"
#include "cpu_numerics.hpp"

namespace {

nlohmann::json table() { return dit_test::fixture("precision_compat_cases.json"); }

dit::CpuMachine machine(const nlohmann::json& m) {
  dit::CpuMachine out;
  out.arch = m["arch"].get<std::string>();
  for (const auto& f : m["flags"]) out.flags.insert(f.get<std::string>());
  return out;
}

dit::VerifiedRecord record(const nlohmann::json& r) {
  dit::VerifiedRecord out;
  if (r.is_null()) return out;
  out.present = true;
  if (r["scheme"].contains("weight_bits")) out.weight_bits = r["scheme"]["weight_bits"].get<int>();
  for (const auto& on : r["on"]) {
    out.on.push_back({on["numerics"].get<std::string>(), on["kernels"].get<std::string>()});
  }
  return out;
}

}  // namespace

TEST(every_case_of_the_shared_table) {
  const auto t = table();
  CHECK(t["cases"].size() >= 20);
  for (const auto& c : t["cases"]) {
    const auto m = machine(t["machines"][c["machine"].get<std::string>()]);
    const auto r = c["record"].is_null() ? dit::VerifiedRecord{}
                                         : record(t["records"][c["record"].get<std::string>()]);
    const auto v = dit::precision_verdict(c["precision"].get<std::string>(), r, m, false);
    const std::string want = c["verdict"] == "reverify" ? "refuse" : c["verdict"].get<std::string>();
    const bool says = v.reason.find(c.value("says", "")) != std::string::npos;
    if (v.action != want || !says) {
      std::cerr << "  case: " << c["name"].get<std::string>() << " -> " << v.action << ": "
                << v.reason << "\n";
    }
    CHECK(v.action == want);
    CHECK(says);
  }
}

TEST(kernel_family_of_every_machine) {
  const auto t = table();
  for (const auto& item : t["machines"].items()) {
    CHECK(dit::kernel_family(machine(item.value())) == item.value()["family"].get<std::string>());
  }
}

TEST(this_cpu_is_read_from_cpuid) {
  const auto m = dit::this_cpu();
  CHECK(!m.arch.empty());
  CHECK(!dit::kernel_family(m).empty());
}

int main() { return dit_test::run_all(); }
