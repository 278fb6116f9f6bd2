// The NVIDIA libraries ONNX Runtime's GPU providers link, loaded before a CUDA or TensorRT
// session: the C++ side of the Python backend's onnxruntime.preload_dlls() call.
//
// pip's onnxruntime-gpu provider libraries carry no RUNPATH to NVIDIA's wheels
// (site-packages/nvidia/*/lib: libcudart, libcublasLt, libcublas, libcufft, libcurand,
// libcudnn), so a C++ runtime linked against the wheel's libonnxruntime cannot start them
// unless those libraries are already loaded (dlopen finds an already loaded library by its
// soname) or on LD_LIBRARY_PATH. A system CUDA install (ldconfig) needs none of this.
#pragma once

#include <string>
#include <vector>

namespace dit {

struct GpuLibraries {
  std::vector<std::string> loaded;  // paths, in load order
  std::vector<std::string> failed;  // "path: dlerror()" for a library that is present but
                                    // does not load
};

/// Load, in dependency order, the soname files (libX.so.N) of the NVIDIA wheels found in
/// `site_packages`/nvidia/*/lib. Missing wheels are not an error (a system CUDA may provide
/// the libraries); libraries already loaded are loaded again harmlessly (reference count).
GpuLibraries preload_nvidia_wheel_libraries(const std::string& site_packages);

/// site-packages of the libonnxruntime this process runs: <dir of the library>/../.. when it
/// is a pip wheel's (.../site-packages/onnxruntime/capi/libonnxruntime.so.*); "" otherwise.
std::string onnxruntime_site_packages();

}  // namespace dit
