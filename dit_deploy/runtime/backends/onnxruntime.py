"""ONNX Runtime backend: CPU here; CUDA and TensorRT execution providers where present.

A requested CUDA/TensorRT provider that ONNX Runtime did not actually start (it falls back
to the CPU with a warning) is refused with the provider's reason. The TensorRT provider gets
the graph's precision and an explicit batch profile from the export's manifest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ArtifactError, BackendUnavailableError
from ..manifest import TensorSpec
from .base import Backend
from .table import GraphRequest

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
}
_PROVIDER_LIBRARIES = {
    "CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
    "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so",
}
_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def _shape_text(shapes: Mapping[str, Sequence[int]]) -> str:
    """``{"image": [1, 3, 96, 96], ...}`` -> ``"image:1x3x96x96,..."`` (the EP's format)."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in shape)}" for name, shape in shapes.items())


def tensorrt_provider_options(
    precision: str,
    inputs: Sequence[TensorSpec] | None,
    cache: str | Path,
    max_batch: int = 8,
) -> dict[str, Any]:
    """TensorRT execution provider options for a graph of ``precision``.

    The EP builds weakly typed TensorRT 10 networks, so the graph's precision must be
    enabled explicitly: FP16 for fp16 graphs, INT8 for Q/DQ graphs (else it fails with "int8
    is not configured" and falls back). FP16 is not enabled for Q/DQ graphs: in a weakly
    typed network it lets TensorRT run the FP32 layers of the verified INT8 graph in FP16.
    With ``inputs`` (the manifest's specs) one explicit profile over the batch axis
    (1, max_batch // 2, max_batch) is set, so a new batch size does not rebuild the engine in
    the middle of a run. Engines and timings are
    cached in ``cache``.
    """
    options: dict[str, Any] = {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": precision == "fp16",
        "trt_int8_enable": precision == "int8",
    }
    if inputs:
        opt = max(1, max_batch // 2)
        for key, batch in (("min", 1), ("opt", opt), ("max", max_batch)):
            shapes = {
                spec.name: [batch if d == "batch" else int(d) for d in spec.shape]
                for spec in inputs
            }
            options[f"trt_profile_{key}_shapes"] = _shape_text(shapes)
    return options


def _graph_in_manifest(graph: Path) -> tuple[str, list[TensorSpec] | None]:
    """(precision, input specs) of ``graph`` from the manifest beside it; ("fp32", None)
    for a graph outside an export directory."""
    from ..export import Export
    from ..manifest import MANIFEST_FILE

    if not (graph.parent / MANIFEST_FILE).is_file():
        return "fp32", None
    manifest = Export.open(graph.parent).manifest
    tables = [("fp32", manifest.graphs), *manifest.precisions.items()]
    for precision, table in tables:
        for spec in table.values():
            if spec.file == graph.name:
                return precision, list(spec.inputs)
    return "fp32", None


# what _preload_gpu_libraries has loaded into this process ("cuda", "tensorrt")
PRELOADED: set[str] = set()


def _preload_gpu_libraries(ort: Any, device: str) -> None:
    """Load the libraries the GPU providers link before a session needs them.

    pip's onnxruntime-gpu provider libraries carry no RUNPATH to the NVIDIA wheels
    (``site-packages/nvidia/*/lib``: libcudart, libcublasLt, libcudnn) nor to TensorRT's
    (libnvinfer): ``onnxruntime.preload_dlls()`` loads the CUDA/cuDNN ones from the wheels,
    and importing ``tensorrt`` loads libnvinfer, after which ``dlopen`` of the providers
    resolves them. Failures are left to the provider check after the session starts, which
    names the library that does not load."""
    if device in ("cuda", "tensorrt") and "cuda" not in PRELOADED and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
            PRELOADED.add("cuda")
        except Exception:  # noqa: BLE001 - reported by the provider check, by library
            pass
    if device == "tensorrt" and "tensorrt" not in PRELOADED:
        try:
            import tensorrt  # noqa: F401 - loads libnvinfer for the TensorRT provider

            PRELOADED.add("tensorrt")
        except ImportError:
            pass


def _provider_failure(provider: str) -> str:
    """Why ONNX Runtime could not create ``provider``: the loader's error for its library
    (a missing libnvinfer/libcudart), or that this onnxruntime has none."""
    import ctypes

    import onnxruntime as ort

    library = _PROVIDER_LIBRARIES.get(provider)
    if library is None:
        return "see ONNX Runtime's warning above"
    path = Path(ort.__file__).parent / "capi" / library
    if not path.is_file():
        return f"this onnxruntime has no {library} (install onnxruntime-gpu instead of onnxruntime)"
    try:
        ctypes.CDLL(str(path))
    except OSError as exc:
        return f"{library} does not load: {exc}"
    return f"{library} loads, but the provider did not start (see ONNX Runtime's warning above)"


def session_providers(
    graph: Path,
    device: str,
    device_id: int = 0,
    available: Sequence[str] | None = None,
    precision: str | None = None,
    cache_dir: str | Path | None = None,
    max_batch: int = 8,
    inputs: Sequence[TensorSpec] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """The (provider, options) list a session over ``graph`` on ``device`` gets: needs no
    device, so the whole GPU set-up runs (and is tested) on any machine. ``available``
    (default: every provider of ``device``) drops the ones this onnxruntime lacks."""
    providers = [p for p in _PROVIDERS[device] if available is None or p in available]
    out: list[tuple[str, dict[str, Any]]] = []
    for provider in providers:
        options: dict[str, Any] = {}
        if provider == "TensorrtExecutionProvider":
            if precision is None or inputs is None:  # a bare call: the manifest beside it
                found_precision, found_inputs = _graph_in_manifest(graph)
                precision, inputs = precision or found_precision, inputs or found_inputs
            cache = Path(cache_dir) if cache_dir else graph.parent / "ort_trt_cache"
            options = tensorrt_provider_options(precision, inputs, cache, max_batch)
            options["device_id"] = device_id
        elif provider == "CUDAExecutionProvider":
            # TF32 off: our FP32 engines clear it too, so an "fp32" cell is FP32 everywhere
            options = {"use_tf32": "0", "device_id": str(device_id)}
        out.append((provider, options))
    return out


def _spec(arg) -> TensorSpec:
    shape = [d if isinstance(d, int) else "batch" for d in arg.shape]
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type), shape)


class OnnxRuntimeBackend(Backend):
    """An ``InferenceSession`` over one graph; ``session.run`` is thread-safe."""

    def __init__(
        self,
        graph: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        optimization: str = "all",
        cache_dir: str | Path | None = None,
        precision: str | None = None,
        max_batch: int = 8,
        inputs: Sequence[TensorSpec] | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError(
                "onnxruntime is not installed: pip install 'dit-deploy[cpu]' "
                "(or onnxruntime-gpu for CUDA/TensorRT)"
            ) from exc
        from ..devices import parse_device

        device, device_id = parse_device(device)  # "cuda:1" -> the CUDA provider on GPU 1
        wanted = _PROVIDERS[device]
        _preload_gpu_libraries(ort, device)
        available = ort.get_available_providers()
        if wanted[0] not in available:
            raise BackendUnavailableError(
                f"ONNX Runtime here has no {wanted[0]} (available: {available}); "
                "install onnxruntime-gpu on a machine with an NVIDIA GPU, or use --device cpu "
                "(Python: device='cpu')"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[optimization]
        self.path = Path(graph)
        if not self.path.is_file():
            raise ArtifactError(f"graph not found: {self.path}; re-export the model")
        planned = session_providers(
            self.path, device, device_id, available, precision, cache_dir, max_batch, inputs
        )
        self.tensorrt_options: dict[str, Any] | None = dict(planned).get(
            "TensorrtExecutionProvider"
        )
        providers = [(name, opts) if opts else name for name, opts in planned]
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ArtifactError(
                f"ONNX Runtime cannot load {self.path}: {exc}. The file is corrupt or was "
                "written by another exporter version; re-export it."
            ) from exc
        loaded = self.session.get_providers()
        if wanted[0] not in loaded:
            # ONNX Runtime falls back (with a warning) when a provider fails to start: a
            # "cuda" run would silently measure the CPU
            raise BackendUnavailableError(
                f"ONNX Runtime did not start {wanted[0]} for {self.path.name} (running "
                f"{loaded}): {_provider_failure(wanted[0])}"
            )
        self.inputs = [_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]
        self.providers = loaded

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        return dict(zip(names, self.session.run(names, dict(feeds)), strict=True))


def open_graph(request: GraphRequest) -> OnnxRuntimeBackend:
    """The backend table's opener: a session over an ONNX graph on the request's device."""
    return OnnxRuntimeBackend(
        request.path,
        device=request.device,
        threads=request.threads,
        precision=request.precision,
        max_batch=request.max_batch,
        inputs=request.inputs,
        **request.options,
    )


def unavailable_reason(precision: str, device: str) -> str | None:
    """The backend table's probe: a GPU device needs its execution provider in this
    onnxruntime (the CPU provider is always there)."""
    del precision  # the provider, not the precision, decides
    provider = _PROVIDERS[device][0]
    if device == "cpu":
        return None
    import onnxruntime

    if provider in onnxruntime.get_available_providers():
        return None
    return f"ONNX Runtime here has no {provider} (needs onnxruntime-gpu and an NVIDIA GPU)"
