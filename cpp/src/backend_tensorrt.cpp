// Native TensorRT backend (compiled only with -DDIT_WITH_TENSORRT=ON and the SDK present).
//
// Engine: as dit_deploy.runtime.engine_sidecar.engine_file names it (text_encoder.onnx ->
// text_encoder.fp32.engine, dit_encoder.int8.onnx -> dit_encoder.int8.engine), with
// the sidecar `<engine>.json` written by the engine builder. The sidecar is judged by the rules
// the Python runtime applies (engine_compat.hpp: TensorRT major.minor.patch or version
// compatibility, compute capability or hardware compatibility, the source graph's sha256);
// a mismatch is refused with the rebuild command. Written against the TensorRT 10/11 API
// (checked with -fsyntax-only against the headers by tests/test_cpp_tensorrt.py):
// IRuntime::setEngineHostCodeAllowed/deserializeCudaEngine,
// getNbIOTensors/getIOTensorName, IExecutionContext::setInputShape/setTensorAddress/enqueueV3.
// One execution context + stream per call guarded by a mutex (contexts are not thread-safe).
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>

#include "backend.hpp"
#include "dit/errors.hpp"
#include "device_buffer.hpp"
#include "devices.hpp"
#include "engine_compat.hpp"

namespace dit {
namespace {

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kERROR) last_error = msg;
  }
  std::string last_error;
};

void cuda_check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw Error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(status));
  }
}

std::string stem_of(const std::string& path) {
  const std::string ext = ".onnx";
  if (path.size() > ext.size() && path.compare(path.size() - ext.size(), ext.size(), ext) == 0) {
    return path.substr(0, path.size() - ext.size());
  }
  return path;
}

std::size_t element_size(nvinfer1::DataType t) {
  switch (t) {
    case nvinfer1::DataType::kFLOAT: return 4;
    case nvinfer1::DataType::kINT64: return 8;
    case nvinfer1::DataType::kINT32: return 4;
    case nvinfer1::DataType::kHALF: return 2;
    default: return 0;
  }
}

struct CudaAllocator {
  std::string allocate(void** ptr, std::size_t bytes) {
    const cudaError_t status = cudaMalloc(ptr, bytes);
    if (status == cudaSuccess) return "";
    cudaGetLastError();  // also recorded as the last error: clear it, it is reported here
    return cudaGetErrorString(status);
  }
  void release(void* ptr) { cudaFree(ptr); }
};
using DeviceBuffer = GrowingBuffer<CudaAllocator>;

class TensorRtBackend : public Backend {
 public:
  // graph_path: the manifest's graph for the role at options.precision (Manifest::graph), so
  // dit_fused.int8.onnx -> dit_fused.int8.engine and, FP32, dit_fused.onnx -> dit_fused.fp32.engine
  TensorRtBackend(const std::string& graph_path, const Options& options,
                  const std::string& source_sha256) {
    const std::string stem = stem_of(graph_path);
    const bool has_precision = stem.find('.', stem.find_last_of('/') + 1) != std::string::npos;
    engine_path_ = stem + (has_precision ? "" : ".fp32") + ".engine";
    const std::string sidecar_path = engine_path_ + ".json";
    const std::string command = "dit-deploy engines <export dir> --precision " + options.precision;
    const std::string rebuild = "build it on this machine with: " + command;
    std::ifstream f(engine_path_, std::ios::binary);
    if (!f) {
      throw ArtifactError("no TensorRT engine " + engine_path_ + "; " + rebuild);
    }
    std::vector<char> plan((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    nlohmann::json sidecar;
    try {
      std::ifstream s(sidecar_path);
      if (!s) throw ArtifactError("missing");
      std::stringstream ss;
      ss << s.rdbuf();
      sidecar = nlohmann::json::parse(ss.str());
    } catch (const std::exception&) {
      throw ArtifactError("TensorRT engine " + engine_path_ + " has no readable sidecar " +
                          sidecar_path + "; " + rebuild);
    }
    // the sidecar is judged with the same rules as the Python runtime (engine_compat.hpp)
    const EngineFacts facts = engine_facts(sidecar, sidecar_path);
    const std::string running = inferlib_version_string(getInferLibVersion());
    const DeviceChoice choice = parse_device(options.device);
    if (choice.kind != "cuda") {
      throw InputError("the tensorrt backend runs on a GPU: use --device cuda or cuda:N, not '" +
                       options.device + "'");
    }
    device_ = choice.index;
    const int device = device_;
    cuda_check(cudaSetDevice(device), "cudaSetDevice");
    cudaDeviceProp prop{};
    cuda_check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
    const std::string cc = std::to_string(prop.major) + "." + std::to_string(prop.minor);
    const EngineVerdict verdict =
        engine_verdict(facts, MachineFacts{running, prop.name, cc, source_sha256});
    if (!verdict.problems.empty()) {
      std::string text = "engine " + facts.engine_file + " does not match this machine: ";
      for (std::size_t i = 0; i < verdict.problems.size(); ++i) {
        text += (i ? "; " : "") + verdict.problems[i];
      }
      throw ArtifactError(text + ". Rebuild it here with: " +
                          (facts.rebuild_command.empty() ? command : facts.rebuild_command));
    }
    for (const auto& warning : verdict.warnings) {
      std::cerr << "dit: " << engine_path_ << ": " << warning << "\n";
    }
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw BackendUnavailableError("TensorRT: createInferRuntime failed");
    // a version-compatible plan embeds the lean runtime (host code): allowed explicitly
    if (facts.version_compatible) runtime_->setEngineHostCodeAllowed(true);
    engine_.reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
    if (!engine_) {
      throw ArtifactError("TensorRT cannot deserialize " + engine_path_ + " (" +
                          logger_.last_error + "); " + rebuild);
    }
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw Error("TensorRT: createExecutionContext failed for " + engine_path_);
    cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate");
    for (int i = 0; i < engine_->getNbIOTensors(); ++i) {
      const char* name = engine_->getIOTensorName(i);
      if (engine_->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT) {
        inputs_.emplace_back(name);
      } else {
        outputs_.emplace_back(name);
      }
    }
    description_ = "tensorrt " + running + " (" + std::string(prop.name) + ")";
  }

  ~TensorRtBackend() override {
    if (stream_) cudaStreamDestroy(stream_);
  }

  TensorMap run(const TensorMap& feeds) const override {
    std::lock_guard<std::mutex> lock(mutex_);
    cuda_check(cudaSetDevice(device_), "cudaSetDevice");  // the calling thread's current GPU
    std::map<std::string, DeviceBuffer>& buffers = buffers_;
    for (const auto& name : inputs_) {
      auto it = feeds.find(name);
      if (it == feeds.end()) {
        throw ArtifactError(engine_path_ + " expects an input named '" + name + "'; rebuild it");
      }
      const Tensor& t = it->second;
      const nvinfer1::DataType dt = engine_->getTensorDataType(name.c_str());
      const bool ok = (t.type == Tensor::Type::kFloat32 && dt == nvinfer1::DataType::kFLOAT) ||
                      (t.type == Tensor::Type::kInt64 && dt == nvinfer1::DataType::kINT64);
      if (!ok) {
        throw ArtifactError(engine_path_ + ": input '" + name +
                            "' is not the float32/int64 the runtime feeds; rebuild from a graph "
                            "with float32 inputs");
      }
      nvinfer1::Dims dims{};
      dims.nbDims = static_cast<int32_t>(t.shape.size());
      for (std::size_t d = 0; d < t.shape.size(); ++d) dims.d[d] = t.shape[d];
      if (!context_->setInputShape(name.c_str(), dims)) {
        throw InputError(engine_path_ + ": input '" + name + "' shape is outside the engine's "
                         "optimisation profile (batch too large?); lower max_batch or rebuild "
                         "with a larger --max-batch");
      }
      DeviceBuffer& buf = buffers[name];
      buf.reserve(t.bytes(), name, engine_path_);
      cuda_check(
          cudaMemcpyAsync(buf.data(), t.data(), t.bytes(), cudaMemcpyHostToDevice, stream_),
          "cudaMemcpyAsync");
      context_->setTensorAddress(name.c_str(), buf.data());
    }
    std::vector<std::pair<std::string, nvinfer1::Dims>> out_dims;
    for (const auto& name : outputs_) {
      nvinfer1::Dims dims = context_->getTensorShape(name.c_str());
      const nvinfer1::DataType dt = engine_->getTensorDataType(name.c_str());
      if (dt != nvinfer1::DataType::kFLOAT) {
        throw ArtifactError(engine_path_ + ": output '" + name + "' is not float32; rebuild");
      }
      std::size_t n = 1;
      for (int d = 0; d < dims.nbDims; ++d) n *= static_cast<std::size_t>(dims.d[d]);
      DeviceBuffer& buf = buffers[name];
      buf.reserve(n * element_size(dt), name, engine_path_);
      context_->setTensorAddress(name.c_str(), buf.data());
      out_dims.emplace_back(name, dims);
    }
    if (!context_->enqueueV3(stream_)) {
      throw Error("TensorRT enqueueV3 failed for " + engine_path_ + ": " + logger_.last_error);
    }
    TensorMap out;
    for (const auto& [name, dims] : out_dims) {
      std::vector<int64_t> shape(dims.d, dims.d + dims.nbDims);
      std::size_t n = 1;
      for (int64_t d : shape) n *= static_cast<std::size_t>(d);
      std::vector<float> host(n);
      cuda_check(cudaMemcpyAsync(host.data(), buffers[name].data(), n * sizeof(float),
                                 cudaMemcpyDeviceToHost, stream_),
                 "cudaMemcpyAsync");
      out[name] = Tensor::floats(std::move(shape), std::move(host));
    }
    cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    return out;
  }

  std::vector<std::string> input_names() const override { return inputs_; }
  std::string description() const override { return description_; }

 private:
  mutable Logger logger_;
  std::string engine_path_, description_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  cudaStream_t stream_ = nullptr;
  int device_ = 0;  // the GPU of "cuda:N": engine, stream and buffers live there
  std::vector<std::string> inputs_, outputs_;
  mutable std::mutex mutex_;
  mutable std::map<std::string, DeviceBuffer> buffers_;
};

}  // namespace

std::unique_ptr<Backend> open_tensorrt(const std::string& graph_path, const Options& options,
                                       const std::string& source_sha256) {
  return std::make_unique<TensorRtBackend>(graph_path, options, source_sha256);
}

}  // namespace dit
