"""Native TensorRT backend: a serialized engine + ``cuda-python`` buffers and streams.

One engine per graph, shared; per thread: one execution context, one CUDA stream, pinned
host buffers and device buffers sized for the profile's maximum batch (so ``run`` never
allocates), and, optionally, one captured CUDA graph per batch size. Inference is
``execute_async_v3`` on the thread's stream. The engine's ``*.engine.json`` sidecar is
checked against the running TensorRT and GPU first; a mismatch is refused with the command
that rebuilds the engine.

``tensorrt`` and ``cuda.bindings`` are imported only when this backend is opened. Every
attribute of theirs used here is checked against the real bindings by
``tests/test_tensorrt_api.py``; keep the names ``trt``/``cudart`` and the variable names
listed there so that check sees them.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BackendUnavailableError, InputError
from ..engine_sidecar import EngineSidecar, check_sidecar, read_sidecar
from ..manifest import TensorSpec
from .base import Backend


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(
            "the tensorrt package is not installed: pip install 'dit-deploy[gpu]' on a machine "
            "with an NVIDIA GPU"
        ) from exc
    return trt


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise BackendUnavailableError(
            "cuda-python is not installed: pip install 'dit-deploy[gpu]' (cuda-python)"
        ) from exc
    return cudart


def cuda_call(result: Any) -> Any:
    """Unwrap a ``cuda.bindings`` result ``(err, *values)``; raise on a CUDA error."""
    cudart = _import_cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(err)
        name = text.decode() if isinstance(text, bytes) else str(text)
        raise BackendUnavailableError(f"CUDA error {int(err)}: {name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str


def gpu_info(device: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device ``device`` (through cuda-python)."""
    cudart = _import_cudart()
    props = cuda_call(cudart.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(name.rstrip("\x00").strip(), f"{props.major}.{props.minor}")


def _host_view(ptr: int, nbytes: int, dtype: np.dtype) -> np.ndarray:
    buffer = (ctypes.c_byte * nbytes).from_address(ptr)
    return np.frombuffer(buffer, dtype=np.uint8).view(dtype)


@dataclass
class _Binding:
    name: str
    dtype: np.dtype
    is_input: bool
    capacity: int  # bytes, at the profile's max shape
    host_ptr: int = 0
    device_ptr: int = 0
    host: np.ndarray | None = None


@dataclass
class _ThreadState:
    context: Any
    stream: Any
    bindings: dict[str, _Binding]
    graphs: dict[tuple, Any] = field(default_factory=dict)  # input shapes -> graph exec
    last_shapes: tuple | None = None


class TensorRTBackend(Backend):
    """One TensorRT engine. Thread-safe: each thread gets its own context/stream/buffers."""

    def __init__(
        self,
        engine_path: str | Path,
        device: str = "cuda",
        threads: int | None = None,
        cuda_graph: bool = False,
        source_sha256: str | None = None,
        device_id: int = 0,
    ) -> None:
        del threads  # CPU threads do not apply to a GPU engine
        if device not in ("cuda", "tensorrt"):
            raise BackendUnavailableError(
                f"the tensorrt backend runs on device 'cuda', not {device!r}"
            )
        self.path = Path(engine_path)
        self.sidecar: EngineSidecar = read_sidecar(self.path)
        trt = _import_tensorrt()
        cudart = _import_cudart()
        cuda_call(cudart.cudaSetDevice(device_id))
        gpu = gpu_info(device_id)
        check_sidecar(
            self.sidecar,
            trt.__version__,
            gpu.name,
            gpu.compute_capability,
            source_sha256,
            export_dir=self.path.parent,
        )
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if self.sidecar.version_compatible:
            self._runtime.engine_host_code_allowed = True
        engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise BackendUnavailableError(
                f"TensorRT could not deserialize {self.path}; rebuild it with: "
                f"{self.sidecar.rebuild_command(self.path.parent)}"
            )
        self.engine = engine
        self.cuda_graph = cuda_graph
        self.device_id = device_id
        self.inputs = [_spec(t) for t in self.sidecar.inputs]
        self.outputs = [_spec(t) for t in self.sidecar.outputs]
        self._names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._local = threading.local()
        self._states: list[_ThreadState] = []
        self._lock = threading.Lock()

    # -- per-thread resources ---------------------------------------------------------
    def _max_shape(self, name: str) -> tuple[int, ...]:
        trt, engine = self._trt, self.engine
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            return tuple(engine.get_tensor_profile_shape(name, 0)[2])
        for spec in self.sidecar.outputs:
            if spec["name"] == name:
                return tuple(
                    self.sidecar.max_batch if d in (-1, "batch") else int(d) for d in spec["shape"]
                )
        raise BackendUnavailableError(f"{self.path}: no shape for output {name!r}")

    def _state(self) -> _ThreadState:
        state = getattr(self._local, "state", None)
        if state is not None:
            return state
        trt, cudart, engine = self._trt, _import_cudart(), self.engine
        cuda_call(cudart.cudaSetDevice(self.device_id))
        context = engine.create_execution_context()
        stream = cuda_call(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
        bindings: dict[str, _Binding] = {}
        for name in self._names:
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            nbytes = int(np.prod(self._max_shape(name))) * dtype.itemsize
            binding = _Binding(
                name, dtype, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT, nbytes
            )
            binding.host_ptr = cuda_call(cudart.cudaMallocHost(nbytes))
            binding.device_ptr = cuda_call(cudart.cudaMalloc(nbytes))
            binding.host = _host_view(binding.host_ptr, nbytes, dtype)
            context.set_tensor_address(name, binding.device_ptr)
            bindings[name] = binding
        state = _ThreadState(context, stream, bindings)
        self._local.state = state
        with self._lock:
            self._states.append(state)
        return state

    # -- inference -----------------------------------------------------------------------
    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = _import_cudart()
        batch = next(iter(feeds.values())).shape[0]
        if batch > self.sidecar.max_batch:
            raise InputError(
                f"batch {batch} > the engine's maximum {self.sidecar.max_batch}; run smaller "
                f"batches or rebuild with --max-batch {batch}"
            )
        state = self._state()
        context, stream = state.context, state.stream
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        shapes = tuple((name, feeds[name].shape) for name in sorted(feeds))
        for name, array in feeds.items():
            binding = state.bindings[name]
            data = np.ascontiguousarray(array, dtype=binding.dtype)
            binding.host[: data.size] = data.ravel()
            context.set_input_shape(name, data.shape)
            cuda_call(
                cudart.cudaMemcpyAsync(
                    binding.device_ptr, binding.host_ptr, data.nbytes, h2d, stream
                )
            )
        self._execute(state, shapes)
        out_shapes = {}
        for spec in self.outputs:
            binding = state.bindings[spec.name]
            shape = tuple(context.get_tensor_shape(spec.name))
            nbytes = int(np.prod(shape)) * binding.dtype.itemsize
            out_shapes[spec.name] = shape
            cuda_call(
                cudart.cudaMemcpyAsync(binding.host_ptr, binding.device_ptr, nbytes, d2h, stream)
            )
        cuda_call(cudart.cudaStreamSynchronize(stream))
        return {
            name: state.bindings[name].host[: int(np.prod(shape))].reshape(shape).copy()
            for name, shape in out_shapes.items()
        }

    def _execute(self, state: _ThreadState, shapes: tuple) -> None:
        cudart = _import_cudart()
        context, stream = state.context, state.stream
        if not self.cuda_graph:
            if not context.execute_async_v3(int(stream)):
                raise BackendUnavailableError(f"TensorRT execute_async_v3 failed on {self.path}")
            return
        graph_exec = state.graphs.get(shapes)
        if graph_exec is None:
            # one plain launch after a shape change lets TensorRT finish its deferred
            # updates; then capture the enqueue for these shapes
            if not context.execute_async_v3(int(stream)):
                raise BackendUnavailableError(f"TensorRT execute_async_v3 failed on {self.path}")
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            cuda_call(cudart.cudaStreamBeginCapture(stream, mode))
            context.execute_async_v3(int(stream))
            graph = cuda_call(cudart.cudaStreamEndCapture(stream))
            graph_exec = cuda_call(cudart.cudaGraphInstantiate(graph, 0))
            cuda_call(cudart.cudaGraphDestroy(graph))
            state.graphs[shapes] = graph_exec
        cuda_call(cudart.cudaGraphLaunch(graph_exec, stream))

    def close(self) -> None:
        """Free every thread's buffers, graphs and streams (also done at garbage collection)."""
        try:
            cudart = _import_cudart()
        except BackendUnavailableError:
            return
        with self._lock:
            states, self._states = self._states, []
        for state in states:
            for graph_exec in state.graphs.values():
                cudart.cudaGraphExecDestroy(graph_exec)
            for binding in state.bindings.values():
                cudart.cudaFreeHost(binding.host_ptr)
                cudart.cudaFree(binding.device_ptr)
            cudart.cudaStreamDestroy(state.stream)

    def __del__(self) -> None:
        if getattr(self, "_states", None):
            self.close()


def _spec(data: Mapping[str, Any]) -> TensorSpec:
    shape = ["batch" if d in (-1, "batch") else int(d) for d in data["shape"]]
    return TensorSpec(data["name"], data["dtype"], shape)
