"""Serving DIT on NVIDIA Triton Inference Server.

- :mod:`.server`: ``dit-deploy serve EXPORT_DIR``, the bundled tritonserver on the python-backend
  repository of :mod:`.triton_repo`;
- :mod:`.triton_models`: the python-backend models (one Pipeline, or the ensemble's steps);
- :mod:`.perf_data`: ``dit-deploy perf-data``, perf_analyzer's input data;
- :mod:`.triton_repo`: ``dit-deploy triton-repo``, a model repository (ensemble) for a
  standalone ``tritonserver`` (NGC container, Kubernetes);
- :mod:`.client`: :class:`~.client.DITClient` on ``tritonclient`` (HTTP and gRPC);
- :mod:`.contract`: the model's inputs/outputs and the per-request handling both servers share.

Heavy imports (PyTriton, tritonclient) happen inside these modules, never here.
"""

from typing import Any

_LAZY = {
    "DITClient": ".client",
    "ServerError": ".errors",
    "RequestError": ".errors",
    "ServerUnavailableError": ".errors",
    "ServerTimeoutError": ".errors",
}


def __getattr__(name: str) -> Any:
    """``from dit_deploy.serving import DITClient`` without importing tritonclient up front."""
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
