"""ONNX Runtime backend: CPU here; CUDA and TensorRT execution providers where present."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ...errors import ArtifactError, BackendUnavailableError
from ..manifest import TensorSpec
from .base import Backend

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
}
_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def _with_options(providers: list[str], graph: Path, cache_dir: str | Path | None) -> list:
    """Provider options: TensorRT caches its engines and timings beside the graph (or in
    ``cache_dir``); precision comes from the graph (FP16 types, Q/DQ), so no fp16/int8 flags."""
    if "TensorrtExecutionProvider" not in providers:
        return providers
    cache = str(Path(cache_dir) if cache_dir else graph.parent / "ort_trt_cache")
    trt_options = {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": cache,
    }
    return [
        ("TensorrtExecutionProvider", trt_options) if p == "TensorrtExecutionProvider" else p
        for p in providers
    ]


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
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError(
                "onnxruntime is not installed: pip install 'dit-deploy[cpu]' "
                "(or onnxruntime-gpu for CUDA/TensorRT)"
            ) from exc
        if device not in _PROVIDERS:
            raise BackendUnavailableError(
                f"unknown device {device!r}; choose one of {list(_PROVIDERS)}"
            )
        wanted = _PROVIDERS[device]
        available = ort.get_available_providers()
        if wanted[0] not in available:
            raise BackendUnavailableError(
                f"ONNX Runtime here has no {wanted[0]} (available: {available}); "
                "install onnxruntime-gpu on a machine with an NVIDIA GPU, or use device='cpu'"
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
        try:
            self.session = ort.InferenceSession(
                str(self.path),
                sess_options=options,
                providers=_with_options(
                    [p for p in wanted if p in available], self.path, cache_dir
                ),
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ArtifactError(
                f"ONNX Runtime cannot load {self.path}: {exc}. The file is corrupt or was "
                "written by another exporter version; re-export it."
            ) from exc
        self.inputs = [_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]
        self.providers = self.session.get_providers()

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        return dict(zip(names, self.session.run(names, dict(feeds)), strict=True))
