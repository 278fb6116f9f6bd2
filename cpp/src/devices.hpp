// The one reading of a device string in the C++ runtime, as the Python runtime's
// dit_deploy.runtime.devices.parse_device: both are tested against one table
// (tests/fixtures/device_strings.json).
#pragma once

#include <string>

#include "dit/errors.hpp"

namespace dit {

struct DeviceChoice {
  std::string kind;  // cpu | cuda | tensorrt
  int index = 0;     // the GPU ("cuda:1" -> 1)
};

/// "cuda:1" -> {cuda, 1}; "cpu", "cuda", "tensorrt" -> index 0. Throws InputError naming the
/// accepted forms.
inline DeviceChoice parse_device(const std::string& device) {
  const auto colon = device.find(':');
  DeviceChoice out{device.substr(0, colon), 0};
  const std::string index = colon == std::string::npos ? "" : device.substr(colon + 1);
  bool ok = out.kind == "cpu" || out.kind == "cuda" || out.kind == "tensorrt";
  if (colon != std::string::npos) {
    ok = ok && out.kind != "cpu" && !index.empty() && index.size() <= 6 &&
         index.find_first_not_of("0123456789") == std::string::npos;  // 6 digits: no overflow
    if (ok) out.index = std::stoi(index);
  }
  if (!ok) {
    throw InputError("device '" + device +
                     "': use cpu, cuda, cuda:N or tensorrt, tensorrt:N (N: a GPU index)");
  }
  return out;
}

}  // namespace dit
