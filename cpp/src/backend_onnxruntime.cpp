// ONNX Runtime backend through its C++ API (headers >= 1.16, any newer library: the C API is
// versioned by ORT_API_VERSION and stays ABI-compatible).
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <mutex>
#include <sstream>

#include "backend.hpp"
#include "devices.hpp"
#include "dit/errors.hpp"
#include "gpu_libraries.hpp"
#include "ort_options.hpp"

namespace dit {

Tensor Tensor::floats(std::vector<int64_t> shape, std::vector<float> data) {
  Tensor t;
  t.type = Type::kFloat32;
  t.shape = std::move(shape);
  t.f32 = std::move(data);
  return t;
}

Tensor Tensor::ints(std::vector<int64_t> shape, std::vector<int64_t> data) {
  Tensor t;
  t.type = Type::kInt64;
  t.shape = std::move(shape);
  t.i64 = std::move(data);
  return t;
}

std::size_t Tensor::numel() const {
  std::size_t n = 1;
  for (int64_t d : shape) n *= static_cast<std::size_t>(d);
  return n;
}

const void* Tensor::data() const {
  return type == Type::kFloat32 ? static_cast<const void*>(f32.data())
                                : static_cast<const void*>(i64.data());
}

std::size_t Tensor::bytes() const {
  return numel() * (type == Type::kFloat32 ? sizeof(float) : sizeof(int64_t));
}

namespace {

std::string parent_dir(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

Ort::Env& ort_env() {
  static Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "dit");
  return env;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

class OnnxRuntimeBackend : public Backend {
 public:
  OnnxRuntimeBackend(const std::string& path, const Options& options,
                     const std::vector<TensorSpec>& inputs)
      : path_(path) {
    std::vector<std::string> available;
    try {
      available = Ort::GetAvailableProviders();
    } catch (const Ort::Exception& exc) {
      throw BackendUnavailableError(std::string("ONNX Runtime is not usable: ") + exc.what());
    }
    auto has = [&](const char* p) {
      return std::find(available.begin(), available.end(), p) != available.end();
    };
    Ort::SessionOptions so;
    so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    if (options.threads > 0) so.SetIntraOpNumThreads(options.threads);
    providers_ = "CPUExecutionProvider";
    // "cuda:1" / "tensorrt:1": the provider on GPU 1
    const DeviceChoice choice = parse_device(options.device);
    const std::string& kind = choice.kind;
    const std::string device_id = std::to_string(choice.index);
    if (kind == "cuda" || kind == "tensorrt") {
      // pip's onnxruntime-gpu: its providers find the NVIDIA wheels' libraries only loaded
      static const GpuLibraries preloaded =
          preload_nvidia_wheel_libraries(onnxruntime_site_packages());
      (void)preloaded;  // a library that still does not load is named by the provider check
    }
    try {
      if (kind == "tensorrt") {
        if (!has("TensorrtExecutionProvider")) unavailable("TensorrtExecutionProvider", available);
        OrtTensorRTProviderOptionsV2* trt = nullptr;
        Ort::ThrowOnError(Ort::GetApi().CreateTensorRTProviderOptions(&trt));
        std::unique_ptr<OrtTensorRTProviderOptionsV2, void (*)(OrtTensorRTProviderOptionsV2*)>
            guard(trt, Ort::GetApi().ReleaseTensorRTProviderOptions);
        // the graph's precision, its batch profile and the engine cache: the one table the
        // Python runtime uses too (ort_options.hpp)
        const std::string cache = options.trt_cache_dir.empty()
                                      ? parent_dir(path) + "/ort_trt_cache"
                                      : options.trt_cache_dir;
        auto table = tensorrt_provider_options(options.precision, inputs, cache, options.max_batch);
        table.emplace_back("device_id", device_id);
        std::vector<const char*> keys, values;
        for (const auto& [k, v] : table) {
          keys.push_back(k.c_str());
          values.push_back(v.c_str());
        }
        Ort::ThrowOnError(Ort::GetApi().UpdateTensorRTProviderOptions(
            trt, keys.data(), values.data(), keys.size()));
        so.AppendExecutionProvider_TensorRT_V2(*trt);
        providers_ = "TensorrtExecutionProvider, CUDAExecutionProvider, CPUExecutionProvider";
      }
      if (kind == "cuda" || kind == "tensorrt") {
        if (!has("CUDAExecutionProvider")) unavailable("CUDAExecutionProvider", available);
        OrtCUDAProviderOptionsV2* cuda = nullptr;
        Ort::ThrowOnError(Ort::GetApi().CreateCUDAProviderOptions(&cuda));
        std::unique_ptr<OrtCUDAProviderOptionsV2, void (*)(OrtCUDAProviderOptionsV2*)> guard(
            cuda, Ort::GetApi().ReleaseCUDAProviderOptions);
        // TF32 off: an fp32 cell computes FP32, as the native engines and the Python runtime
        const char* keys[] = {"device_id", "use_tf32"};
        const char* values[] = {device_id.c_str(), "0"};
        Ort::ThrowOnError(Ort::GetApi().UpdateCUDAProviderOptions(cuda, keys, values, 2));
        so.AppendExecutionProvider_CUDA_V2(*cuda);
        if (kind == "cuda") providers_ = "CUDAExecutionProvider, CPUExecutionProvider";
      } else if (kind != "cpu") {
        throw BackendUnavailableError("unknown device '" + options.device +
                                      "'; choose one of cpu, cuda, tensorrt");
      }
    } catch (const Ort::Exception& exc) {
      throw BackendUnavailableError("ONNX Runtime cannot enable device '" + options.device +
                                    "': " + exc.what() + "; use device cpu");
    }
    try {
      session_ = std::make_unique<Ort::Session>(ort_env(), path.c_str(), so);
    } catch (const Ort::Exception& exc) {
      throw ArtifactError("ONNX Runtime cannot load " + path + ": " + exc.what() +
                          ". The file is corrupt or was written by another exporter version; "
                          "re-export it.");
    }
    Ort::AllocatorWithDefaultOptions alloc;
    for (std::size_t i = 0; i < session_->GetInputCount(); ++i) {
      inputs_.emplace_back(session_->GetInputNameAllocated(i, alloc).get());
      Ort::TypeInfo type = session_->GetInputTypeInfo(i);  // owns what the view below reads
      input_types_.push_back(type.GetTensorTypeAndShapeInfo().GetElementType());
    }
    for (std::size_t i = 0; i < session_->GetOutputCount(); ++i) {
      outputs_.emplace_back(session_->GetOutputNameAllocated(i, alloc).get());
    }
  }

  TensorMap run(const TensorMap& feeds) const override {
    Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    std::vector<Ort::Value> values;
    std::vector<const char*> in_names, out_names;
    for (std::size_t i = 0; i < inputs_.size(); ++i) {
      auto it = feeds.find(inputs_[i]);
      if (it == feeds.end()) {
        throw ArtifactError(path_ + " expects an input named '" + inputs_[i] +
                            "' that the runtime does not produce (inputs: " + join(inputs_) +
                            "); re-export with this version of dit-deploy");
      }
      const Tensor& t = it->second;
      const bool want_float = input_types_[i] == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
      const bool want_int = input_types_[i] == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
      if ((t.type == Tensor::Type::kFloat32 && !want_float) ||
          (t.type == Tensor::Type::kInt64 && !want_int)) {
        throw ArtifactError(path_ + ": input '" + inputs_[i] +
                            "' has an element type other than the float32/int64 the runtime "
                            "feeds; export graphs with float32 inputs");
      }
      auto* data = const_cast<void*>(t.data());
      values.push_back(Ort::Value::CreateTensor(
          mem, data, t.bytes(), t.shape.data(), t.shape.size(), input_types_[i]));
      in_names.push_back(inputs_[i].c_str());
    }
    for (const auto& o : outputs_) out_names.push_back(o.c_str());
    std::vector<Ort::Value> results;
    try {
      results = session_->Run(Ort::RunOptions{nullptr}, in_names.data(), values.data(),
                              values.size(), out_names.data(), out_names.size());
    } catch (const Ort::Exception& exc) {
      throw Error("ONNX Runtime failed to run " + path_ + ": " + exc.what());
    }
    TensorMap out;
    for (std::size_t i = 0; i < results.size(); ++i) {
      auto info = results[i].GetTensorTypeAndShapeInfo();
      std::vector<int64_t> shape = info.GetShape();
      const std::size_t n = info.GetElementCount();
      if (info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
        const float* p = results[i].GetTensorData<float>();
        out[outputs_[i]] = Tensor::floats(shape, std::vector<float>(p, p + n));
      } else if (info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) {
        const int64_t* p = results[i].GetTensorData<int64_t>();
        out[outputs_[i]] = Tensor::ints(shape, std::vector<int64_t>(p, p + n));
      } else {
        throw ArtifactError(path_ + ": output '" + outputs_[i] +
                            "' is not float32; export graphs with float32 outputs");
      }
    }
    return out;
  }

  std::vector<std::string> input_names() const override { return inputs_; }

  std::string description() const override {
    return std::string("onnxruntime ") + Ort::GetVersionString() + " (" + providers_ + ")";
  }

 private:
  [[noreturn]] static void unavailable(const std::string& provider,
                                       const std::vector<std::string>& available) {
    throw BackendUnavailableError("ONNX Runtime here has no " + provider + " (available: " +
                                  join(available) +
                                  "); link an ONNX Runtime GPU build on a machine with an NVIDIA "
                                  "GPU, or use device cpu");
  }

  std::string path_;
  std::string providers_;
  std::unique_ptr<Ort::Session> session_;
  std::vector<std::string> inputs_, outputs_;
  std::vector<ONNXTensorElementDataType> input_types_;
};

}  // namespace

std::unique_ptr<Backend> open_onnxruntime(const std::string& graph_path, const Options& options,
                                          const std::vector<TensorSpec>& inputs) {
  return std::make_unique<OnnxRuntimeBackend>(graph_path, options, inputs);
}

#ifndef DIT_HAVE_TENSORRT
std::unique_ptr<Backend> open_tensorrt(const std::string& graph_path, const Options&,
                                       const std::string&) {
  throw BackendUnavailableError(
      "this dit library was built without TensorRT, so it cannot run the engine for " +
      graph_path +
      ". Rebuild on a machine with the TensorRT SDK: cmake -S cpp -B build "
      "-DDIT_WITH_TENSORRT=ON (or use backend onnxruntime)");
}
#endif

}  // namespace dit
