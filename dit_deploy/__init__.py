"""dit-deploy: DIT (Deep Instruction Tuning for Segment Anything) from checkpoint to production.

Heavy parts import lazily: ``import dit_deploy`` needs only numpy and Pillow, so the
torch-free runtime (:mod:`dit_deploy.runtime`) stays torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    ArtifactError,
    BackendUnavailableError,
    CheckpointError,
    ConfigError,
    DITError,
    ImageError,
    InputError,
    TextError,
    ValidationError,
)

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "BackendUnavailableError",
    "CheckpointError",
    "ConfigError",
    "DITError",
    "DITModel",
    "ImageError",
    "InputError",
    "TextError",
    "ValidationError",
    "__version__",
]

if TYPE_CHECKING:
    from .model import DITModel


def __getattr__(name: str) -> Any:
    if name == "DITModel":
        from .model import DITModel

        return DITModel
    raise AttributeError(f"module 'dit_deploy' has no attribute {name!r}")
