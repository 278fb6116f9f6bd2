// tests/test_gpu_loading.py: the C++ runtime's GPU loading step against a pip onnxruntime-gpu.
// Links that wheel's libonnxruntime, runs (or, with "none", skips) the step the ONNX Runtime
// backend runs before a CUDA session (cpp/src/gpu_libraries.hpp), then asks ONNX Runtime
// for its CUDA provider on a session and prints what happened, one line.
#include <onnxruntime_cxx_api.h>

#include <cstdio>
#include <string>

#include "gpu_libraries.hpp"

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  const bool preload = std::string(argv[1]) == "preload";
  const std::string site = dit::onnxruntime_site_packages();
  std::printf("site-packages: %s\n", site.c_str());
  if (preload) {
    const dit::GpuLibraries libs = dit::preload_nvidia_wheel_libraries(site);
    std::printf("preloaded: %zu, failed: %zu\n", libs.loaded.size(), libs.failed.size());
  }
  try {
    Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "probe");  // its log names the library
    Ort::SessionOptions options;
    OrtCUDAProviderOptionsV2* cuda = nullptr;
    Ort::ThrowOnError(Ort::GetApi().CreateCUDAProviderOptions(&cuda));
    options.AppendExecutionProvider_CUDA_V2(*cuda);
    Ort::GetApi().ReleaseCUDAProviderOptions(cuda);
    Ort::Session session(env, argv[2], options);
    std::printf("cuda: session created\n");
  } catch (const Ort::Exception& e) {
    std::printf("cuda: %s\n", e.what());
  }
  return 0;
}
