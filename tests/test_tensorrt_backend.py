"""The TensorRT runtime backend's control flow on a CPU: fakes of ``tensorrt`` and
``cuda.bindings.runtime`` that keep "device" memory in host buffers, return results the way
the real bindings do (bools, ``(err, value)`` tuples) and fail where TensorRT fails. The
calls themselves are checked against the real wheels by ``tests/test_tensorrt_api.py``."""

from __future__ import annotations

import ctypes
import types

import numpy as np
import pytest
from gpu_boundary import gpu_boundary

from dit_deploy.errors import BackendUnavailableError, InputError
from dit_deploy.runtime import devices
from dit_deploy.runtime.backends import tensorrt as backend
from dit_deploy.runtime.engine_sidecar import EngineSidecar, write_sidecar
from dit_deploy.runtime.manifest import TensorSpec


class FakeCudart(types.SimpleNamespace):
    """``cuda.bindings.runtime`` on host memory: every call returns ``(err, *values)``."""

    def __init__(self) -> None:
        super().__init__()
        self.cudaError_t = types.SimpleNamespace(cudaSuccess=0)
        self.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1,
                                                    cudaMemcpyDeviceToHost=2)  # fmt: skip
        self.cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeThreadLocal=1)
        self.cudaStreamNonBlocking = 1
        self.buffers: list = []
        self.capture: list | None = None
        self.capture_failed = False
        self.graphs_destroyed = 0
        self.launches = 0
        self.captures = 0
        self.live: set[int] = set()  # allocated and not freed
        self.streams = 0  # created and not destroyed
        self.device_free: int | None = None
        self.devices_set: list[int] = []

    def cudaGetErrorString(self, err):
        return 0, b"out of memory" if err == 2 else b"stream capture invalidated"

    def cudaSetDevice(self, device):
        self.devices_set.append(device)
        return (0,)

    def _alloc(self, nbytes):
        buf = ctypes.create_string_buffer(nbytes)
        self.buffers.append(buf)
        self.live.add(ctypes.addressof(buf))
        return 0, ctypes.addressof(buf)

    cudaMallocHost = _alloc

    def cudaMalloc(self, nbytes):
        if self.device_free is not None:  # a GPU with this many bytes left
            if nbytes > self.device_free:
                return 2, 0  # cudaErrorMemoryAllocation
            self.device_free -= nbytes
        return self._alloc(nbytes)

    def cudaStreamCreateWithFlags(self, flags):
        self.streams += 1
        return 0, 7

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        ctypes.memmove(dst, src, nbytes)
        return (0,)

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capture, self.capture_failed = [], False
        self.captures += 1
        return (0,)

    def cudaStreamEndCapture(self, stream):
        # a failed enqueue need not invalidate the capture: the graph holds what was
        # enqueued before the failure (a partial graph)
        ops, self.capture = self.capture, None
        return 0, ("graph", ops)

    def cudaGraphInstantiate(self, graph, flags):
        return 0, ("exec", graph[1])

    def cudaGraphDestroy(self, graph):
        self.graphs_destroyed += 1
        return (0,)

    def cudaGraphLaunch(self, graph_exec, stream):
        self.launches += 1
        for op in graph_exec[1]:
            op()
        return (0,)

    def cudaGraphExecDestroy(self, graph_exec):
        return (0,)

    def cudaFreeHost(self, ptr):
        self.live.discard(ptr)
        return (0,)

    cudaFree = cudaFreeHost

    def cudaStreamDestroy(self, stream):
        self.streams -= 1
        return (0,)


class FakeContext:
    """logits[b, 0] = image[b].sum(axis=0), read and written at the bound addresses."""

    def __init__(self, trt) -> None:
        self.trt, self.addresses, self.shapes = trt, {}, {}

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def set_input_shape(self, name, shape):
        if not self.trt.profile[0] <= shape[0] <= self.trt.profile[1]:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return (self.shapes["image"][0], 1, 2, 2)

    def _op(self):
        b = self.shapes["image"][0]
        image = np.frombuffer(
            (ctypes.c_float * (b * 12)).from_address(self.addresses["image"]), np.float32
        ).reshape(b, 3, 2, 2)
        out = np.frombuffer(
            (ctypes.c_float * (b * 4)).from_address(self.addresses["logits"]), np.float32
        )
        out[:] = image.sum(axis=1).ravel()

    def execute_async_v3(self, stream_handle):
        cudart = self.trt.cudart
        if self.trt.fail_enqueue:
            if cudart.capture is not None:
                cudart.capture_failed = True
            return False
        if cudart.capture is not None:
            cudart.capture.append(self._op)
        else:
            self._op()
        return True


def fake_trt(cudart: FakeCudart, profile=(1, 4)):
    trt = types.SimpleNamespace(__version__="10.13.3.9", cudart=cudart, profile=profile,
                                fail_enqueue=False)  # fmt: skip
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, s: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT=1, OUTPUT=2)
    trt.nptype = lambda dtype: np.float32

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ("image", "logits")[i]

        def get_tensor_mode(self, name):
            return 1 if name == "image" else 2

        def get_tensor_dtype(self, name):
            return 0

        def get_tensor_profile_shape(self, name, index):
            return [(1, 3, 2, 2), (2, 3, 2, 2), (4, 3, 2, 2)]

        def create_execution_context(self):
            return FakeContext(trt)

    class Runtime:
        def __init__(self, logger):
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, plan):
            return Engine()

    trt.Runtime = Runtime
    return trt


@pytest.fixture
def make_backend(tmp_path, monkeypatch):
    def make(min_batch=1, profile=(1, 4), **kw):
        cudart = FakeCudart()
        trt = fake_trt(cudart, profile)
        monkeypatch.setattr(devices, "import_cudart", lambda: cudart)
        monkeypatch.setattr(backend, "import_cudart", lambda: cudart)
        monkeypatch.setattr(backend, "_import_tensorrt", lambda: trt)
        monkeypatch.setattr(backend, "installed_tensorrt_version", lambda: "10.13.3.9")
        monkeypatch.setattr(backend, "gpu_info", lambda d=0: devices.GpuInfo("NVIDIA H200", "9.0"))
        engine = tmp_path / "dit_fused.fp32.engine"
        engine.write_bytes(b"plan")
        write_sidecar(
            engine,
            EngineSidecar(
                engine_file=engine.name,
                source_onnx="dit_fused.onnx",
                source_sha256="ab" * 32,
                role="dit_fused",
                precision="fp32",
                tensorrt_version="10.13.3.9",
                gpu_name="NVIDIA H200",
                compute_capability="9.0",
                profile={"min_batch": min_batch, "opt_batch": 2, "max_batch": 4, "shapes": {}},
                inputs=[TensorSpec("image", "float32", ["batch", 3, 2, 2])],
                outputs=[TensorSpec("logits", "float32", ["batch", 1, 2, 2])],
            ),
        )
        return backend.TensorRTBackend(engine, **kw), trt, cudart

    return make


def _image(batch: int) -> np.ndarray:
    return np.arange(batch * 12, dtype=np.float32).reshape(batch, 3, 2, 2)


def test_run_copies_in_executes_and_copies_out(make_backend):
    b, _, _ = make_backend()
    for batch in (1, 3):
        out = b.run({"image": _image(batch)})["logits"]
        np.testing.assert_array_equal(out, _image(batch).sum(axis=1, keepdims=True))


def test_cuda_graph_captures_once_then_replays(make_backend):
    b, _, cudart = make_backend(cuda_graph=True)
    first = b.run({"image": _image(2)})["logits"]
    second = b.run({"image": _image(2) + 1})["logits"]
    np.testing.assert_array_equal(second, (_image(2) + 1).sum(axis=1, keepdims=True))
    assert not np.array_equal(first, second) and cudart.launches == 2
    assert cudart.captures == 1  # the second call of the same shape replays, no new capture


def test_failed_enqueue_during_capture_never_leaves_a_graph(make_backend):
    b, trt, cudart = make_backend(cuda_graph=True)
    calls = {"n": 0}
    real = FakeContext.execute_async_v3

    def fail_second(self, stream):  # the warm-up launch works, the captured one fails
        calls["n"] += 1
        trt.fail_enqueue = calls["n"] == 2
        return real(self, stream)

    FakeContext.execute_async_v3 = fail_second
    try:
        with pytest.raises(BackendUnavailableError, match="execute_async_v3 failed"):
            b.run({"image": _image(2)})
    finally:
        FakeContext.execute_async_v3 = real
    state = b._local.state
    assert state.graphs == {} and cudart.capture is None and cudart.launches == 0
    assert cudart.graphs_destroyed == 1 and cudart.capture_failed
    trt.fail_enqueue = False
    np.testing.assert_array_equal(
        b.run({"image": _image(2)})["logits"], _image(2).sum(axis=1, keepdims=True)
    )


def test_shape_refused_by_tensorrt_is_an_input_error(make_backend):
    b, _, _ = make_backend(profile=(1, 2))  # the engine's real profile is narrower
    with pytest.raises(InputError, match="TensorRT refused input 'image' of shape"):
        b.run({"image": _image(3)})


def test_batch_below_the_profile_minimum_is_refused_before_the_run(make_backend):
    b, _, cudart = make_backend(min_batch=2)
    with pytest.raises(InputError, match=r"batch 1 is outside the engine's profile \(2..4\)"):
        b.run({"image": _image(1)})
    assert cudart.buffers == []  # refused before any allocation
    with pytest.raises(InputError, match="batch 5 is outside"):
        b.run({"image": _image(5)})


@pytest.mark.cuda
def test_cuda_python_buffers_streams_and_graphs_on_a_gpu():
    """The backend's cuda.bindings calls, for real: pinned and device buffers, async copies
    on a non-blocking stream, a captured graph replayed (no TensorRT needed)."""
    from dit_deploy.runtime.devices import cuda_call, gpu_info, import_cudart

    cudart = import_cudart()  # the bindings import without a GPU (the dev extra has them)
    # the constants this test and the backend pass, as the CUDA runtime API defines them
    assert int(cudart.cudaStreamNonBlocking) == 1
    assert int(cudart.cudaMemcpyKind.cudaMemcpyHostToDevice) == 1
    gpu_boundary(need_tensorrt=False)
    info = gpu_info(0)
    assert info.name and "." in info.compute_capability
    cuda_call(cudart.cudaSetDevice(0))
    stream = cuda_call(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
    n = 1024 * 4
    host_in, host_out = (cuda_call(cudart.cudaMallocHost(n)) for _ in range(2))
    dev = cuda_call(cudart.cudaMalloc(n))
    src = np.frombuffer((ctypes.c_byte * n).from_address(host_in), np.float32)
    dst = np.frombuffer((ctypes.c_byte * n).from_address(host_out), np.float32)
    h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
    d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
    cuda_call(cudart.cudaStreamBeginCapture(stream, mode))
    cuda_call(cudart.cudaMemcpyAsync(dev, host_in, n, h2d, stream))
    cuda_call(cudart.cudaMemcpyAsync(host_out, dev, n, d2h, stream))
    graph = cuda_call(cudart.cudaStreamEndCapture(stream))
    graph_exec = cuda_call(cudart.cudaGraphInstantiate(graph, 0))
    for value in (1.5, -2.0):
        src[:] = value
        cuda_call(cudart.cudaGraphLaunch(graph_exec, stream))
        cuda_call(cudart.cudaStreamSynchronize(stream))
        assert np.all(dst == value)
    for result in (
        cudart.cudaGraphExecDestroy(graph_exec),
        cudart.cudaGraphDestroy(graph),
        cudart.cudaFree(dev),
        cudart.cudaFreeHost(host_in),
        cudart.cudaFreeHost(host_out),
        cudart.cudaStreamDestroy(stream),
    ):
        cuda_call(result)


def test_out_of_gpu_memory_is_typed_leaks_nothing_and_recovers(make_backend):
    b, _, cudart = make_backend()
    cudart.device_free = 4 * 3 * 2 * 2 * 4  # the image buffer fits, the logits' does not
    with pytest.raises(
        BackendUnavailableError, match=r"cannot allocate .* for 'logits'.*out of memory"
    ):
        b.run({"image": _image(1)})
    assert not cudart.live and cudart.streams == 0  # the partial state was freed
    cudart.device_free = None  # memory freed elsewhere: the same backend works
    out = b.run({"image": _image(2)})["logits"]
    np.testing.assert_array_equal(out, _image(2).sum(axis=1, keepdims=True))
    b.close()
    assert not cudart.live and cudart.streams == 0


def test_cuda_n_selects_that_gpu(make_backend):
    b, _, cudart = make_backend(device="cuda:1")
    b.run({"image": _image(1)})
    assert b.device_id == 1 and set(cudart.devices_set) == {1}
