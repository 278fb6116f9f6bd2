"""TensorRT engines from an export's typed ONNX graphs (GPU machines).

- :mod:`.build`: :func:`build_engines` (``EngineOptions`` -> engine paths), one engine and one
  ``*.engine.json`` sidecar per graph; every check that can fail cheaply runs before a build.
- :mod:`.cli`: the ``dit-deploy engines`` verb (``register``) and ``export/to_trt.py``.
- :mod:`.compare`: an engine against ONNX Runtime through Polygraphy's comparator.

Imported without TensorRT: ``tensorrt`` is imported only when a build starts.
"""

from .build import EngineOptions, build_engines

__all__ = ["EngineOptions", "build_engines"]
