"""Runtime backends: one small interface, heavy imports only when a backend is chosen."""

from __future__ import annotations

from pathlib import Path

from ...errors import BackendUnavailableError
from .base import Backend

BACKENDS = ("onnxruntime", "tensorrt")


def open_backend(
    name: str, graph: Path, device: str = "cpu", threads: int | None = None, **options
) -> Backend:
    """Open ``graph`` with the named backend (an ONNX file; for ``tensorrt`` an engine file).

    ``options`` go to the backend (tensorrt: ``cuda_graph``, ``source_sha256``; onnxruntime:
    ``precision``, ``max_batch`` for the TensorRT provider's flags and profile).
    """
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(graph, device=device, threads=threads, **options)
    if name == "tensorrt":
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(graph, device=device, threads=threads, **options)
    raise BackendUnavailableError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "open_backend"]
