// The JSON tables the C++ and Python runtimes are both tested against (tests/fixtures/).
#pragma once

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

namespace dit_test {

inline nlohmann::json fixture(const std::string& name) {
  std::ifstream in(std::string(DIT_REPO_ROOT) + "/tests/fixtures/" + name);
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

}  // namespace dit_test
