"""Native TensorRT backend: a serialized engine + ``cuda-python`` buffers and streams.

One engine per graph, shared; per thread: one execution context, one CUDA stream, pinned
host buffers and device buffers sized for the profile's maximum batch (so ``run`` never
allocates), and, optionally, one captured CUDA graph per batch size. Inference is
``execute_async_v3`` on the thread's stream. The engine's ``*.engine.json`` sidecar is
checked against the running TensorRT and GPU first; a mismatch is refused with the command
that rebuilds the engine.

The sidecar is validated and judged (TensorRT's own compatibility rules) before ``tensorrt``
is imported, so one error names every problem. ``tensorrt`` and ``cuda.bindings`` are
imported only when this backend is opened. Every call made on them here is checked against
the real binding wheels (owners and pybind signatures) by ``tests/test_tensorrt_api.py``;
keep the names ``trt``/``cudart`` and the variable names listed there so that check sees
them.
"""

from __future__ import annotations

import ctypes
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BackendUnavailableError, InputError
from ..devices import (
    cuda_call,
    gpu_info,
    import_cudart,
    installed_tensorrt_version,
    parse_device,
)
from ..engine_sidecar import EngineSidecar, check_sidecar, read_sidecar
from .base import Backend
from .table import GraphRequest

_TENSORRT_HINT = (
    "the tensorrt package is not installed: pip install 'dit-deploy[gpu]' on a machine with an "
    "NVIDIA GPU"
)


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(_TENSORRT_HINT) from exc
    return trt


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


def _free_state(cudart: Any, state: _ThreadState) -> None:
    """Free what ``state`` holds (graphs, the buffers allocated so far, its stream)."""
    for graph_exec in state.graphs.values():
        cudart.cudaGraphExecDestroy(graph_exec)
    for binding in state.bindings.values():
        if binding.host_ptr:
            cudart.cudaFreeHost(binding.host_ptr)
        if binding.device_ptr:
            cudart.cudaFree(binding.device_ptr)
    cudart.cudaStreamDestroy(state.stream)


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
        kind, index = parse_device(device)
        if kind == "cpu":
            raise BackendUnavailableError(
                f"the tensorrt backend runs on device 'cuda' or 'cuda:N', not {device!r}"
            )
        device_id = index or device_id
        self.path = Path(engine_path)
        self.sidecar: EngineSidecar = read_sidecar(self.path)
        self._check_before_import(source_sha256, device_id)
        trt = _import_tensorrt()
        cudart = import_cudart()
        cuda_call(cudart.cudaSetDevice(device_id))
        gpu = gpu_info(device_id)
        for warning in check_sidecar(
            self.sidecar,
            trt.__version__,
            gpu.name,
            gpu.compute_capability,
            source_sha256,
            export_dir=self.path.parent,
        ):
            warnings.warn(f"{self.path.name}: {warning}", stacklevel=2)
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
        self.inputs = list(self.sidecar.inputs)
        self.outputs = list(self.sidecar.outputs)
        self._names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._local = threading.local()
        self._states: list[_ThreadState] = []
        self._lock = threading.Lock()

    def _check_before_import(self, source_sha256: str | None, device_id: int) -> None:
        """Judge the sidecar against what this machine has (TensorRT's version from package
        metadata, the GPU through cuda-python) before importing TensorRT, so that one error
        names every problem: an engine for another GPU *and* a missing TensorRT."""
        missing: list[str] = []
        version = installed_tensorrt_version()
        if version is None:
            missing.append(_TENSORRT_HINT)
        gpu = None
        try:
            gpu = gpu_info(device_id)
        except BackendUnavailableError as exc:
            missing.append(str(exc))
        check_sidecar(
            self.sidecar,
            version,
            gpu.name if gpu else None,
            gpu.compute_capability if gpu else None,
            source_sha256,
            export_dir=self.path.parent,
            also_missing=missing,
        )
        if missing:
            raise BackendUnavailableError(
                f"cannot run TensorRT engine {self.path.name} here: " + "; ".join(missing)
            )

    # -- per-thread resources ---------------------------------------------------------
    def _max_shape(self, name: str) -> tuple[int, ...]:
        trt, engine = self._trt, self.engine
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            return tuple(engine.get_tensor_profile_shape(name, 0)[2])
        for spec in self.sidecar.outputs:
            if spec.name == name:
                return tuple(self.sidecar.max_batch if d == "batch" else int(d) for d in spec.shape)
        raise BackendUnavailableError(f"{self.path}: no shape for output {name!r}")

    def _state(self) -> _ThreadState:
        state = getattr(self._local, "state", None)
        if state is not None:
            return state
        trt, cudart, engine = self._trt, import_cudart(), self.engine
        cuda_call(cudart.cudaSetDevice(self.device_id))
        context = engine.create_execution_context()
        if context is None:
            raise BackendUnavailableError(
                f"TensorRT could not create an execution context for {self.path} (out of GPU "
                "memory?)"
            )
        stream = cuda_call(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
        state = _ThreadState(context, stream, {})
        try:
            for name in self._names:
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
                nbytes = int(np.prod(self._max_shape(name))) * dtype.itemsize
                binding = _Binding(
                    name, dtype, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT, nbytes
                )
                state.bindings[name] = binding  # registered first: a failure below frees it
                try:
                    binding.host_ptr = cuda_call(cudart.cudaMallocHost(nbytes))
                    binding.device_ptr = cuda_call(cudart.cudaMalloc(nbytes))
                except BackendUnavailableError as exc:
                    raise BackendUnavailableError(
                        f"cannot allocate {nbytes / 2**20:.1f} MiB for {name!r} of "
                        f"{self.path.name} (buffers are sized for the profile's max batch "
                        f"{self.sidecar.max_batch}): {exc}. Free GPU memory, use fewer threads, "
                        "or rebuild the engine with a smaller --max-batch"
                    ) from exc
                binding.host = _host_view(binding.host_ptr, nbytes, dtype)
                if not context.set_tensor_address(name, binding.device_ptr):
                    raise BackendUnavailableError(f"TensorRT refused the buffer of {name!r}")
        except BaseException:
            _free_state(cudart, state)  # nothing leaks; the next call allocates anew
            raise
        self._local.state = state
        with self._lock:
            self._states.append(state)
        return state

    # -- inference -----------------------------------------------------------------------
    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = import_cudart()
        batch = next(iter(feeds.values())).shape[0]
        lo, hi = self.sidecar.min_batch, self.sidecar.max_batch
        if not lo <= batch <= hi:
            raise InputError(
                f"batch {batch} is outside the engine's profile ({lo}..{hi}); run batches of "
                f"{lo}..{hi} or rebuild with --min-batch/--max-batch covering {batch}"
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
            if not context.set_input_shape(name, data.shape):
                raise InputError(
                    f"{self.path.name}: TensorRT refused input {name!r} of shape {data.shape} "
                    f"(outside the profile {self.sidecar.profile.get('shapes', {}).get(name)})"
                )
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

    def _enqueue(self, context: Any, stream: Any) -> None:
        if not context.execute_async_v3(int(stream)):
            raise BackendUnavailableError(f"TensorRT execute_async_v3 failed on {self.path}")

    def _execute(self, state: _ThreadState, shapes: tuple) -> None:
        cudart = import_cudart()
        context, stream = state.context, state.stream
        if not self.cuda_graph:
            self._enqueue(context, stream)
            return
        graph_exec = state.graphs.get(shapes)
        if graph_exec is None:
            # one plain launch after a shape change lets TensorRT finish its deferred
            # updates; then capture the enqueue for these shapes
            self._enqueue(context, stream)
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            cuda_call(cudart.cudaStreamBeginCapture(stream, mode))
            try:
                self._enqueue(context, stream)
            except BackendUnavailableError:
                # end the capture and drop the partial graph: never replay it
                _, graph = cudart.cudaStreamEndCapture(stream)
                if graph is not None:
                    cudart.cudaGraphDestroy(graph)
                raise
            graph = cuda_call(cudart.cudaStreamEndCapture(stream))
            graph_exec = cuda_call(cudart.cudaGraphInstantiate(graph, 0))
            cuda_call(cudart.cudaGraphDestroy(graph))
            state.graphs[shapes] = graph_exec
        cuda_call(cudart.cudaGraphLaunch(graph_exec, stream))

    def close(self) -> None:
        """Free every thread's buffers, graphs and streams (also done at garbage collection)."""
        try:
            cudart = import_cudart()
        except BackendUnavailableError:
            return
        with self._lock:
            states, self._states = self._states, []
        for state in states:
            _free_state(cudart, state)

    def __del__(self) -> None:
        if getattr(self, "_states", None):
            self.close()


def open_graph(request: GraphRequest) -> TensorRTBackend:
    """The backend table's opener: a built engine (``request.path``) on a GPU."""
    return TensorRTBackend(
        request.path,
        device=request.device,
        threads=request.threads,
        cuda_graph=request.cuda_graph,
        source_sha256=request.source_sha256 or None,
        **request.options,
    )


def unavailable_reason(precision: str, device: str) -> str | None:
    """The backend table's probe: cuda-python's runtime bindings (the table checks the GPU
    and the tensorrt package)."""
    del precision, device  # every engine precision needs the same stack
    try:
        import_cudart()
    except BackendUnavailableError as exc:
        return str(exc)
    return None
