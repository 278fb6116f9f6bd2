"""DIT configuration: dataclasses filled from the registry in ``configs.yaml``.

A config is data: ``DITConfig.to_dict()`` round-trips through JSON, and every
exported artifact carries it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

VARIANTS = ("layer_wise", "e2e")
_REGISTRY_FILE = Path(__file__).with_name("configs.yaml")


@dataclass(frozen=True)
class EncoderConfig:
    """SAM's ViT image encoder as DIT uses it."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int
    build_size: int  # the size the encoder was built for (SAM: 1024): sets table shapes
    patch_size: int = 16
    out_chans: int = 256
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    use_rel_pos: bool = True
    layer_norm_eps: float = 1e-6


@dataclass(frozen=True)
class TextEncoderConfig:
    """A BERT-family text encoder; only ``feature_layer`` layers are built and run."""

    vocab_size: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    feature_layer: int = 1  # output of this encoder layer (1-based) feeds DIT
    lowercase: bool = True
    name: str = "bert"


@dataclass(frozen=True)
class DecoderConfig:
    """SAM's prompt encoder + two-way-transformer mask decoder."""

    transformer_dim: int = 256
    depth: int = 2
    mlp_dim: int = 2048
    num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16


@dataclass(frozen=True)
class DITConfig:
    """Everything needed to build a DIT model and to pre/post-process for it."""

    name: str
    variant: str
    encoder: EncoderConfig
    text_encoder: TextEncoderConfig
    decoder: DecoderConfig
    input_size: int = 512
    max_tokens: int = 20
    mask_threshold: float = 0.35
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    text_dropout: float = 0.1  # dropout on the per-block text projections (training only)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown DIT variant {self.variant!r}; choose one of {VARIANTS}")
        enc = self.encoder
        if self.input_size % enc.patch_size:
            raise ConfigError(
                f"input_size {self.input_size} is not a multiple of patch_size {enc.patch_size}"
            )
        if enc.embed_dim % enc.num_heads:
            raise ConfigError(f"embed_dim {enc.embed_dim} not divisible by {enc.num_heads} heads")
        if enc.out_chans != self.decoder.transformer_dim:
            raise ConfigError(
                f"encoder out_chans {enc.out_chans} must equal decoder transformer_dim "
                f"{self.decoder.transformer_dim}"
            )
        if not self.text_encoder.feature_layer > 0:
            raise ConfigError("text_encoder.feature_layer must be >= 1")
        if self.max_tokens < 3:
            raise ConfigError("max_tokens must leave room for [CLS], one word and [SEP]")

    @property
    def grid_size(self) -> int:
        """Token grid side at the input size (512 / 16 = 32)."""
        return self.input_size // self.encoder.patch_size

    @property
    def projects_text(self) -> bool:
        """True when the text width differs from the encoder width (needs ``prob_text``)."""
        return self.text_encoder.hidden_size != self.encoder.embed_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DITConfig:
        try:
            d = dict(data)
            if d.get("extra") == {}:
                del d["extra"]  # an always-empty field that dit-deploy 0.1.0 wrote
            enc = dict(d.pop("encoder"))
            enc["global_attn_indexes"] = tuple(enc["global_attn_indexes"])
            return cls(
                encoder=EncoderConfig(**enc),
                text_encoder=TextEncoderConfig(**d.pop("text_encoder")),
                decoder=DecoderConfig(**d.pop("decoder")),
                pixel_mean=tuple(d.pop("pixel_mean", DITConfig.pixel_mean)),
                pixel_std=tuple(d.pop("pixel_std", DITConfig.pixel_std)),
                **d,
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"invalid DIT config: {exc}") from exc

    def replace(self, **changes: Any) -> DITConfig:
        """A copy with top-level fields, or fields of the encoder/text_encoder/decoder, changed."""
        data = self.to_dict()
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            elif key not in data:
                raise ConfigError(f"unknown DIT config field {key!r}")
            else:
                data[key] = value
        return DITConfig.from_dict(data)


@cache
def _registry() -> dict[str, Any]:
    return yaml.safe_load(_REGISTRY_FILE.read_text())


def list_configs() -> list[str]:
    """All registry names, ``<variant>_<size>``."""
    reg = _registry()
    return [f"{v}_{s}" for s in reg["sizes"] for v in reg["variants"]]


def get_config(name: str, **overrides: Any) -> DITConfig:
    """Build the config registered as ``name`` (e.g. ``layer_wise_vit_b``)."""
    reg = _registry()
    for variant in reg["variants"]:
        if name.startswith(variant + "_") and name[len(variant) + 1 :] in reg["sizes"]:
            size = reg["sizes"][name[len(variant) + 1 :]]
            break
    else:
        raise ConfigError(f"unknown DIT config {name!r}; registered: {', '.join(list_configs())}")
    text_name = size["text_encoder"]
    data = {
        "name": name,
        "variant": variant,
        "encoder": size["encoder"],
        "text_encoder": {**reg["text_encoders"][text_name], "name": text_name},
        "decoder": reg["decoders"][size["decoder"]],
        "input_size": size["input_size"],
    }
    config = DITConfig.from_dict(data)
    return config.replace(**overrides) if overrides else config
