"""Runtime backends: one table (``table.TABLE``), one small interface, heavy imports only when
a backend is opened."""

from __future__ import annotations

from pathlib import Path

from .base import Backend
from .table import (
    GRAPH_PRECISIONS,
    BackendRow,
    Execution,
    GraphRequest,
    backend_names,
    backend_row,
    check_execution,
    executions,
    precisions,
    register,
)

# open_backend keywords that are GraphRequest fields; the rest are backend options
_REQUEST_FIELDS = ("precision", "max_batch", "inputs", "source_sha256", "cuda_graph")


def open_backend(
    name: str,
    graph: Path,
    device: str = "cpu",
    threads: int | None = None,
    execution: str = "",
    **options,
) -> Backend:
    """Open ``graph`` with the named backend (an ONNX file; for ``tensorrt`` an engine file).

    ``execution``: the manifest's execution precision for this graph ("" = the graph's own
    types; ``openvino-bf16`` = run the FP32 graph in BF16, only on ``openvino``).
    ``options``: ``precision``, ``max_batch``, ``inputs`` (ONNX Runtime's TensorRT provider
    flags and profile), ``source_sha256``, ``cuda_graph`` (tensorrt), and backend keywords
    (onnxruntime: ``optimization``, ``cache_dir``; openvino: ``streams``, ``hint``,
    ``cache_dir``).
    """
    row = backend_row(name)
    mode = check_execution(name, execution)
    fields = {k: options.pop(k) for k in _REQUEST_FIELDS if k in options}
    if fields.get("inputs") is not None:
        fields["inputs"] = tuple(fields["inputs"])
    request = GraphRequest(Path(graph), device, threads, execution=mode, options=options, **fields)
    return row.open(request)


__all__ = [
    "GRAPH_PRECISIONS",
    "Backend",
    "BackendRow",
    "Execution",
    "GraphRequest",
    "backend_names",
    "backend_row",
    "check_execution",
    "executions",
    "open_backend",
    "precisions",
    "register",
]
