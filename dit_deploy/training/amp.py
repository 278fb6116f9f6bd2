"""Mixed precision of a training run: the autocast dtype, the loss scaler on resume, and the
precision evaluation runs in."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision (the authors' recipe; CPUs for auto).

    ``auto`` picks bf16 only where the GPU has native bf16 (Ampere and later): the emulated
    bf16 of V100/T4 is slow and loses memory-efficient attention, so those get fp16.
    """
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def amp_name(dtype: torch.dtype | None) -> str:
    """The config name of an autocast dtype: ``off``, ``bf16`` or ``fp16``."""
    return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def restore_scaler(
    scaler: torch.amp.GradScaler, state: dict[str, Any], saved_amp: str, amp: str
) -> str | None:
    """Load the loss scaler of a checkpoint when the precision allows; returns a note when the
    precision changed (bf16/fp32 -> fp16 starts a fresh scale; fp16 -> bf16/fp32 drops it)."""
    if saved_amp == amp:
        if scaler.is_enabled():
            scaler.load_state_dict(state)
        return None
    if scaler.is_enabled() and state:
        scaler.load_state_dict(state)
    return f"precision changed on resume: {saved_amp} -> {amp}" + (
        " (fresh loss scale)" if scaler.is_enabled() and not state else ""
    )


@contextlib.contextmanager
def eval_precision(
    precision: str, device: torch.device, train_amp: torch.dtype | None
) -> Iterator[None]:
    """Autocast / TF32 for evaluation: ``auto`` = the training dtype, else TF32 on CUDA."""
    if precision == "auto":
        precision = amp_name(train_amp) if train_amp is not None else "tf32"
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        with torch.autocast(device.type, dtype=dtype):
            yield
        return
    if precision == "tf32" and device.type == "cuda":
        old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
        return
    yield
