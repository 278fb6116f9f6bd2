"""Serving DIT on NVIDIA Triton Inference Server.

- :mod:`.server`: ``dit-deploy serve EXPORT_DIR``, a real Triton server through PyTriton;
- :mod:`.triton_repo`: ``dit-deploy triton-repo``, a model repository (ensemble) for a
  standalone ``tritonserver`` (NGC container, Kubernetes);
- :mod:`.client`: :class:`~.client.DITClient` on ``tritonclient`` (HTTP and gRPC);
- :mod:`.contract`: the model's inputs/outputs and the per-request handling both servers share.

Heavy imports (PyTriton, tritonclient) happen inside these modules, never here.
"""
