"""Typed errors. Every message names the problem and the fix.

Catch :class:`DITError` to handle anything this package raises on purpose.
"""

from __future__ import annotations


class DITError(Exception):
    """Base class of every error raised on purpose by dit_deploy."""


class InputError(DITError, ValueError):
    """A user input (image, text, array) cannot be used."""


class ImageError(InputError):
    """An image is missing, corrupt, or of a kind that cannot be converted to RGB."""


class TextError(InputError):
    """A referring expression is empty, not a string, or unreasonably long."""


class ConfigError(DITError, ValueError):
    """A model configuration name or field is unknown or inconsistent."""


class CheckpointError(DITError):
    """A checkpoint is missing, unreadable, or does not match the model (lists the keys)."""


class ArtifactError(DITError):
    """An export directory, graph, manifest or engine is missing, corrupt or outdated."""


class BackendUnavailableError(DITError):
    """A runtime backend (onnxruntime, TensorRT, CUDA) is not installed or has no device here."""


class PrecisionUnavailableError(BackendUnavailableError):
    """A precision (e.g. BF16) needs hardware or a backend this machine does not have."""


class ValidationError(DITError):
    """An exported artifact differs from its reference by more than the tolerance."""


class DatasetError(DITError):
    """A path is not a dataset, or one of its files (refs, annotations, images, masks) is bad."""
