"""Runtime backends: one small interface, heavy imports only when a backend is chosen."""

from __future__ import annotations

from pathlib import Path

from ...errors import BackendUnavailableError, PrecisionUnavailableError
from .base import Backend

BACKENDS = ("onnxruntime", "openvino", "tensorrt")
# execution precisions a manifest may name for a graph (``GraphSpec.execution``): the graph
# file is unchanged and the backend runs it at this precision
EXECUTIONS = {"openvino-bf16": ("openvino", "bf16")}


def check_execution(name: str, execution: str) -> None:
    """Refuse (typed error) an execution precision that backend ``name`` cannot provide."""
    if not execution:
        return
    if execution not in EXECUTIONS:
        raise PrecisionUnavailableError(
            f"execution precision {execution!r} is unknown to this dit-deploy "
            f"(knows: {', '.join(EXECUTIONS)}); upgrade dit-deploy"
        )
    wanted = EXECUTIONS[execution][0]
    if wanted != name:
        raise PrecisionUnavailableError(
            f"this precision is an execution mode of {wanted} ({execution}): open it with "
            f"backend={wanted!r}, or choose precision fp32/fp16/int8 for {name}"
        )


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
    ``options`` go to the backend (tensorrt: ``cuda_graph``, ``source_sha256``; onnxruntime:
    ``precision``, ``max_batch`` for the TensorRT provider's flags and profile, ``optimization``,
    ``cache_dir``; openvino: ``streams``, ``hint``, ``cache_dir``).
    """
    check_execution(name, execution)
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(graph, device=device, threads=threads, **options)
    if name == "openvino":
        from .openvino import OpenVINOBackend

        mode = EXECUTIONS[execution][1] if execution else "f32"
        return OpenVINOBackend(graph, device=device, threads=threads, execution=mode, **options)
    if name == "tensorrt":
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(graph, device=device, threads=threads, **options)
    raise BackendUnavailableError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "EXECUTIONS", "Backend", "check_execution", "open_backend"]
