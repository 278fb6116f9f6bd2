"""The DIT model: one definition, a registry of variants and sizes, strict checkpoint loading."""

from .checkpoint import LoadReport
from .config import (
    VARIANTS,
    DecoderConfig,
    DITConfig,
    EncoderConfig,
    TextEncoderConfig,
    get_config,
    list_configs,
)
from .dit import DIT, DITOutput, build_dit, upsample_logits

__all__ = [
    "DIT",
    "VARIANTS",
    "DITConfig",
    "DITModel",
    "DITOutput",
    "DecoderConfig",
    "EncoderConfig",
    "LoadReport",
    "TextEncoderConfig",
    "build_dit",
    "get_config",
    "list_configs",
    "upsample_logits",
]


def __getattr__(name: str):
    # DITModel pulls in the tokenizer and image I/O; import it only when asked for.
    if name == "DITModel":
        from .dit_model import DITModel

        return DITModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
