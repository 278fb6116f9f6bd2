// Device strings against the table the Python runtime's parse_device is tested with
// (tests/fixtures/device_strings.json): one reading for both.
#include <nlohmann/json.hpp>
#include <string>

#include "check.hpp"
#include "devices.hpp"
#include "fixture.hpp"

TEST(every_case_of_the_shared_table) {
  const auto t = dit_test::fixture("device_strings.json");
  CHECK(t["cases"].size() >= 14);
  for (const auto& c : t["cases"]) {
    const std::string device = c["device"];
    if (c.value("error", false)) {
      CHECK_THROWS(dit::InputError, dit::parse_device(device), "use cpu, cuda, cuda:N");
      continue;
    }
    const dit::DeviceChoice got = dit::parse_device(device);
    CHECK_EQ(got.kind, c["kind"].get<std::string>());
    CHECK_EQ(got.index, c["index"].get<int>());
  }
}

int main() { return dit_test::run_all(); }
