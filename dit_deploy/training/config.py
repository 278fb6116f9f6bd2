"""The training configuration: a YAML file mapped onto dataclasses, overridable from the CLI.

    model: layer_wise_vit_b          # registry name (dit_deploy/model/configs.yaml)
    model_overrides: {}              # DITConfig.replace(...) arguments
    text_encoder: bert-base-uncased/ # Hugging Face BERT directory (weights + vocab.txt)
    sam_checkpoint: null             # SAM .pth to initialise the image encoder and decoder
    data: {path: data/refcoco, dataset: null, train_split: train, val_splits: [val]}
    optim: {global_batch_size: 64, epochs: 40, lr: 1.0e-4, min_lr: 1.0e-6, warmup_epochs: 3, ...}
    augment: {multi_scale: true, color_jitter: 0.4, jitter_prob: 0.8, blur_prob: 0.0, ...}

The defaults of every field are the authors' recipe (``wysnzzzz/DIT``: ``train.py``,
``config/layer_wise.yaml``, ``datasets/dataloader.py``, ``datasets/transforms.py``); each
deviation is a field one sets, listed in ``docs/training.md``. Values are coerced to the
field's type (YAML reads ``5e-4`` as a string) and anything that cannot be is a
:class:`ConfigError` naming the key. Relative paths are taken as given.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

AMP_MODES = ("off", "bf16", "fp16", "auto")
EVAL_PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")
FLIP_TEXT_MODES = ("substring", "word")
SAMPLE_UNITS = ("object", "expression")


@dataclass
class DataConfig:
    """Where the data is and which splits to use."""

    path: str | None = None
    dataset: str | None = None  # when ``path`` holds several (refcoco, refcoco+, ...)
    train_split: str = "train"
    #: evaluated after every epoch (the first one picks ``best/``)
    val_splits: list[str] = field(default_factory=lambda: ["val"])
    #: evaluated once, at the end, with the best weights (testA/testB: ~2/3 of eval time)
    test_splits: list[str] = field(default_factory=list)
    #: one training sample per referred object with one of its expressions drawn at random
    #: every epoch (the authors), or one per expression
    sample_unit: str = "object"
    max_train_samples: int | None = None  # first N samples only (tests, smoke runs)
    max_val_samples: int | None = None
    num_workers: int = 2
    #: Replace every expression by this constant text (the text-blind baseline), or None.
    constant_text: str | None = None


@dataclass
class OptimConfig:
    """Adam + warm-up/cosine + clipping + EMA, the authors' recipe by default."""

    global_batch_size: int = 64  # summed over ranks and accumulation steps
    grad_accum: int = 1
    epochs: int = 40
    lr: float = 1e-4
    min_lr: float = 1e-6
    warmup_epochs: float = 3.0
    warmup_start_lr: float = 1e-7  # the lr of step 0; linear to ``lr`` over the warm-up
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 0.0
    clip_grad_norm: float | None = 0.15
    ema: bool = True
    ema_decay: float = 0.9997
    ema_warmup: bool = True
    #: off (fp32, the authors) | bf16 | fp16 | auto (bf16 on GPUs with native bf16, else fp16
    #: with loss scaling; off on CPU)
    amp: str = "off"
    freeze: list[str] = field(default_factory=list)  # module prefixes, e.g. lang_encoder


@dataclass
class AugmentConfig:
    """The authors' training augmentations, in their order (evaluation uses the letterbox only).

    1. multi-scale: long side ``(512 - 32k) * S / 512``, k uniform in 0..scales-1;
    2. colour jitter with probability ``jitter_prob``: brightness, contrast, saturation each
       in ``[1 - x, 1 + x]`` (no hue), in a random order (``jitter_random_order``);
    3. Gaussian blur with probability ``blur_prob`` (sigma in pixels of the resized image);
    4. horizontal flip (``flip_prob``), swapping left/right in the text (``flip_text``).
    """

    multi_scale: bool = True
    scales: int = 7
    color_jitter: float = 0.4
    jitter_prob: float = 0.8
    jitter_random_order: bool = True
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    flip_prob: float = 0.5
    #: substring: the authors' ``str.replace`` (also turns "bright" into "bleft");
    #: word: "left"/"right" (and leftmost/rightmost) as words, case kept
    flip_text: str = "substring"
    #: the target mask is resized bilinearly and kept soft at the edges (the authors'
    #: ``to_tensor`` of the resized 0/255 mask), or thresholded at 0.5
    soft_target: bool = True


@dataclass
class TrainConfig:
    """Everything one training run needs."""

    model: str = "layer_wise_vit_b"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    text_encoder: str | None = None
    sam_checkpoint: str | None = None
    init_from: str | None = None  # our save_pretrained directory (fine-tuning)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    output_dir: str = "runs/dit"
    #: a checkpoint directory holding train_state.pt; read by rank 0 only and broadcast
    resume: str | None = None
    stop_after_epochs: int | None = None  # end this invocation early (time-sliced jobs)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    cpu_threads: int | None = None  # torch threads summed over the local processes
    eval_every: int = 1  # epochs
    #: auto: the training autocast dtype, else TF32 matmuls on CUDA (fp32 on CPU)
    eval_precision: str = "auto"
    log_every: int = 10  # optimiser steps between loss read-backs (one GPU sync each)
    progress: bool = True
    tensorboard: bool = True  # used when the tensorboard package is installed
    #: PyTorch's strict deterministic mode (errors on ops with no deterministic kernel)
    deterministic: bool = False
    #: recompute each ViT block in the backward (ViT-L/H at 16 per GPU)
    activation_checkpointing: bool = False
    dist_timeout_min: float = 30.0  # collective timeout of the process group
    save_timeout_min: float = 120.0  # how long other ranks wait while rank 0 saves

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data or {})
        sections = {"data": DataConfig, "optim": OptimConfig, "augment": AugmentConfig}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in sections:
                if value is not None and not isinstance(value, dict):
                    raise ConfigError(f"training config section {key!r} must be a mapping")
                kwargs[key] = _build(sections[key], dict(value or {}), key + ".")
            else:
                kwargs[key] = value
        cfg = _build(cls, kwargs, "")
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"training config not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys")
        return cls.from_dict(data or {})

    def override(self, dotted: dict[str, Any]) -> TrainConfig:
        """A copy with ``{"optim.lr": 1e-3, "seed": 1}``-style overrides applied."""
        data = self.to_dict()
        for key, value in dotted.items():
            node = data
            *parents, leaf = key.split(".")
            for p in parents:
                if not isinstance(node.get(p), dict):
                    raise ConfigError(f"unknown training config section {key!r}")
                node = node[p]
            if leaf not in node and parents != ["model_overrides"]:
                raise ConfigError(f"unknown training config key {key!r}")
            node[leaf] = value
        return TrainConfig.from_dict(data)

    def validate(self) -> None:
        o, a = self.optim, self.augment
        _one_of("optim.amp", o.amp, AMP_MODES)
        _one_of("eval_precision", self.eval_precision, EVAL_PRECISIONS)
        _one_of("augment.flip_text", a.flip_text, FLIP_TEXT_MODES)
        _one_of("data.sample_unit", self.data.sample_unit, SAMPLE_UNITS)
        _one_of("device", self.device, ("auto", "cpu", "cuda"))
        if o.global_batch_size < 1 or o.grad_accum < 1 or o.epochs < 1:
            raise ConfigError("global_batch_size, grad_accum and epochs must be >= 1")
        if not 0 <= o.min_lr <= o.lr:
            raise ConfigError(f"need 0 <= min_lr <= lr, got {o.min_lr} and {o.lr}")
        if not 0 <= o.warmup_start_lr <= o.lr:
            raise ConfigError(f"need 0 <= warmup_start_lr <= lr, got {o.warmup_start_lr}")
        if not 0.0 <= o.ema_decay < 1.0:
            raise ConfigError(f"optim.ema_decay must be in [0, 1), got {o.ema_decay}")
        for name in ("jitter_prob", "blur_prob", "flip_prob"):
            if not 0.0 <= getattr(a, name) <= 1.0:
                raise ConfigError(f"augment.{name} must be in [0, 1], got {getattr(a, name)}")
        if self.log_every < 1 or self.eval_every < 1:
            raise ConfigError("log_every and eval_every must be >= 1")
        if self.dist_timeout_min <= 0 or self.save_timeout_min <= 0:
            raise ConfigError("dist_timeout_min and save_timeout_min must be > 0")


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} must be one of {'|'.join(allowed)}, got {value!r}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """``cls(**values)`` with each value coerced to its field's annotated type."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown training config key(s) {[prefix + k for k in unknown]}; "
            f"known in this section: {sorted(names)}"
        )
    kwargs = {}
    for key, value in values.items():
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, hints[key]):
            kwargs[key] = value
        else:
            kwargs[key] = coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` as the type ``hint`` (float, int, bool, str, X | None, list[X], tuple[...],
    dict); strings are parsed (``"5e-4"`` -> 5e-4, ``"true"`` -> True), a scalar given for a
    list is a list of one.

    Raises:
        ConfigError: the value cannot be read as that type (names the key and the type).
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        is_null = value is None or (
            isinstance(value, str) and value.lower() in ("null", "none", "~")
        )
        if is_null and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: cannot read {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = _parse(value)
        if value is None or isinstance(value, dict):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if not isinstance(value, (list, tuple)):
            value = [value]  # `--set data.val_splits=val`
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if isinstance(value, str):
            value = _parse(value)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key} must be a list of {len(args)} values, got {value!r}")
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(coerce(v, t, f"{key}[{i}]") for i, (v, t) in pairs)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        try:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            return int(number)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{key} must be an integer, got {value!r}") from None
    if hint is str:
        if value is False and key.endswith("amp"):  # YAML 1.1 reads a bare `off` as false
            return "off"
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported config type {hint!r}")


def _parse(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
