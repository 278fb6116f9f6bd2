"""The training configuration: a YAML file mapped onto dataclasses, overridable from the CLI.

    model: layer_wise_vit_b          # registry name (dit_deploy/model/configs.yaml)
    model_overrides: {}              # DITConfig.replace(...) arguments
    text_encoder: bert-base-uncased/ # Hugging Face BERT directory (weights + vocab.txt)
    sam_checkpoint: null             # SAM .pth to initialise the image encoder and decoder
    data: {path: data/refcoco, dataset: null, train_split: train, val_splits: [val]}
    optim: {global_batch_size: 64, epochs: 40, lr: 1.0e-4, min_lr: 1.0e-6, warmup_epochs: 3, ...}
    augment: {multi_scale: true, color_jitter: 0.2, blur_prob: 0.2, flip_prob: 0.5}

Relative paths are taken as given (relative to the working directory).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError


@dataclass
class DataConfig:
    """Where the data is and which splits to use."""

    path: str | None = None
    dataset: str | None = None  # when ``path`` holds several (refcoco, refcoco+, ...)
    train_split: str = "train"
    val_splits: list[str] = field(default_factory=lambda: ["val"])
    max_train_samples: int | None = None  # first N samples only (tests, smoke runs)
    max_val_samples: int | None = None
    num_workers: int = 2
    #: Replace every expression by this constant text (the text-blind baseline), or None.
    constant_text: str | None = None


@dataclass
class OptimConfig:
    """Adam + warm-up/cosine + clipping, the authors' recipe by default."""

    global_batch_size: int = 64  # summed over ranks and accumulation steps
    grad_accum: int = 1
    epochs: int = 40
    lr: float = 1e-4
    min_lr: float = 1e-6
    warmup_epochs: float = 3.0
    warmup_start_factor: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 0.0
    clip_grad_norm: float | None = 0.15
    ema: bool = True
    ema_decay: float = 0.999
    ema_warmup: bool = True
    #: off | bf16 | fp16 | auto (bf16 on GPUs that support it, else fp16; off on CPU)
    amp: str = "auto"
    freeze: list[str] = field(default_factory=list)  # module prefixes, e.g. lang_encoder


@dataclass
class AugmentConfig:
    """The authors' training augmentations (evaluation uses the shared letterbox only)."""

    multi_scale: bool = True  # long side (512 - 32k) * input_size / 512, k = 0..scales-1
    scales: int = 7
    color_jitter: float = 0.2  # brightness / contrast / saturation in [1 - x, 1 + x]; no hue
    blur_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 1.0)  # in pixels of the input resolution
    flip_prob: float = 0.5  # also swaps "left" <-> "right" in the expression


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
    resume: str | None = None  # a checkpoint directory holding train_state.pt
    stop_after_epochs: int | None = None  # end this invocation early (time-sliced jobs)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    cpu_threads: int | None = None  # torch threads summed over the local processes
    eval_every: int = 1  # epochs
    log_every: int = 10  # steps (CSV/TensorBoard step logging)
    progress: bool = True
    tensorboard: bool = True  # used when the tensorboard package is installed
    deterministic: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data or {})
        sections = {"data": DataConfig, "optim": OptimConfig, "augment": AugmentConfig}
        try:
            kwargs: dict[str, Any] = {}
            for key, value in data.items():
                if key in sections:
                    sub = dict(value or {})
                    if sub.get("amp") is False:  # YAML 1.1 reads a bare `off` as false
                        sub["amp"] = "off"
                    for k in ("betas", "blur_sigma"):
                        if k in sub:
                            sub[k] = tuple(sub[k])
                    kwargs[key] = sections[key](**sub)
                else:
                    kwargs[key] = value
            cfg = cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"invalid training config: {exc}") from exc
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"training config not found: {path}")
        return cls.from_dict(yaml.safe_load(path.read_text()) or {})

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
        o = self.optim
        if o.amp not in ("off", "bf16", "fp16", "auto"):
            raise ConfigError(f"optim.amp must be off|bf16|fp16|auto, got {o.amp!r}")
        if o.global_batch_size < 1 or o.grad_accum < 1 or o.epochs < 1:
            raise ConfigError("global_batch_size, grad_accum and epochs must be >= 1")
        if not 0 <= o.min_lr <= o.lr:
            raise ConfigError(f"need 0 <= min_lr <= lr, got {o.min_lr} and {o.lr}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto|cpu|cuda, got {self.device!r}")
