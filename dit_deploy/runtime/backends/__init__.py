"""Runtime backends: one small interface, heavy imports only when a backend is chosen."""

from __future__ import annotations

from pathlib import Path

from ...errors import BackendUnavailableError
from .base import Backend

BACKENDS = ("onnxruntime",)


def open_backend(
    name: str, graph: Path, device: str = "cpu", threads: int | None = None
) -> Backend:
    """Open ``graph`` (an ONNX file) with the named backend."""
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(graph, device=device, threads=threads)
    raise BackendUnavailableError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "open_backend"]
