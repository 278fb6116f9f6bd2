#include "gpu_libraries.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <filesystem>
#include <regex>

namespace dit {
namespace fs = std::filesystem;

namespace {

// dependency order: the CUDA runtime and nvJitLink first, cuBLASLt before cuBLAS, cuDNN last
const char* const kOrder[] = {"cudart",  "nvJitLink", "nvrtc", "cublasLt",
                              "cublas",  "cufft",     "curand", "cudnn"};

}  // namespace

GpuLibraries preload_nvidia_wheel_libraries(const std::string& site_packages) {
  GpuLibraries out;
  const fs::path root = fs::path(site_packages) / "nvidia";
  std::error_code ec;
  if (site_packages.empty() || !fs::is_directory(root, ec)) return out;
  std::vector<fs::path> found;
  for (const auto& wheel : fs::directory_iterator(root, ec)) {
    const fs::path lib = wheel.path() / "lib";
    if (!fs::is_directory(lib, ec)) continue;
    for (const auto& entry : fs::directory_iterator(lib, ec)) found.push_back(entry.path());
  }
  std::sort(found.begin(), found.end());
  for (const char* name : kOrder) {
    const std::regex soname(std::string("lib") + name + R"(\.so\.\d+)");
    for (const auto& path : found) {
      if (!std::regex_match(path.filename().string(), soname)) continue;
      if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) != nullptr) {
        out.loaded.push_back(path.string());
      } else {
        const char* why = dlerror();
        out.failed.push_back(path.string() + ": " + (why ? why : "dlopen failed"));
      }
    }
  }
  return out;
}

std::string onnxruntime_site_packages() {
  void* symbol = dlsym(RTLD_DEFAULT, "OrtGetApiBase");
  Dl_info info{};
  if (symbol == nullptr || dladdr(symbol, &info) == 0 || info.dli_fname == nullptr) return "";
  std::error_code ec;  // .deps/onnxruntime/lib/libonnxruntime.so.1 links to the wheel's file
  const fs::path real = fs::canonical(info.dli_fname, ec);
  if (ec) return "";
  const fs::path capi = real.parent_path();
  if (capi.filename() != "capi" || capi.parent_path().filename() != "onnxruntime") return "";
  return capi.parent_path().parent_path().string();
}

}  // namespace dit
