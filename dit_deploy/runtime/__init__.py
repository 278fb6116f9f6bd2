"""The torch-free runtime: numpy + onnxruntime (or OpenVINO, or TensorRT). Never imports torch."""

from .export import Export
from .manifest import Manifest, read_manifest
from .predictor import Predictor

__all__ = ["Export", "Manifest", "Predictor", "read_manifest"]
