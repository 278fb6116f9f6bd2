// ONNX Runtime's TensorRT provider options against the table the Python runtime is tested
// with (tests/fixtures/ort_tensorrt_options.json): one option table for both.
#include <nlohmann/json.hpp>
#include <string>

#include "check.hpp"
#include "fixture.hpp"
#include "ort_options.hpp"

namespace {

nlohmann::json table() { return dit_test::fixture("ort_tensorrt_options.json"); }

}  // namespace

TEST(every_case_of_the_shared_table) {
  const auto t = table();
  std::vector<dit::TensorSpec> inputs;
  for (const auto& spec : t["inputs"]) {
    dit::TensorSpec s;
    s.name = spec["name"].get<std::string>();
    s.dtype = spec["dtype"].get<std::string>();
    for (const auto& d : spec["shape"]) s.shape.push_back(d.is_string() ? -1 : d.get<long long>());
    inputs.push_back(s);
  }
  CHECK(t["cases"].size() == 6);
  for (const auto& c : t["cases"]) {
    const auto got = dit::tensorrt_provider_options(
        c["precision"].get<std::string>(), inputs, c["cache"].get<std::string>(),
        c["max_batch"].get<int>());
    nlohmann::json as_object = nlohmann::json::object();
    for (const auto& [k, v] : got) as_object[k] = v;
    if (as_object != c["options"]) {
      std::cerr << "  case " << c["precision"] << " max_batch " << c["max_batch"] << ": "
                << as_object.dump() << "\n";
    }
    CHECK(as_object == c["options"]);
  }
}

TEST(no_inputs_no_profile) {
  const auto got = dit::tensorrt_provider_options("int8", {}, "c", 8);
  for (const auto& [k, v] : got) CHECK(k.rfind("trt_profile_", 0) != 0);
}

int main() { return dit_test::run_all(); }
