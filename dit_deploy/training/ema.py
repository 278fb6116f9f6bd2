"""Exponential moving average of a model's weights (evaluated and exported instead of the raw
weights when enabled).

    ema = decay_t * ema + (1 - decay_t) * weights,   decay_t = min(decay, (1 + t) / (10 + t))

with ``t`` the number of updates so far when ``warmup`` is on (the authors' ``EMA``: early
averages are not dominated by the initialisation), else ``decay_t = decay``. Floating-point
parameters and buffers are averaged with one ``torch._foreach_lerp_`` over all tensors (a
fused multi-tensor kernel on GPUs, not a Python loop over ~400 tensors); integer buffers are
copied.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEMA:
    """A shadow copy of ``model`` updated with :meth:`update` after every optimiser step."""

    def __init__(self, model: nn.Module, decay: float = 0.9997, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend ``model``'s current weights into the average (``model`` has the same keys)."""
        d = self.current_decay()
        self.updates += 1
        src = model.state_dict()
        avg_f, new_f = [], []
        for name, avg in self.module.state_dict().items():
            new = src[name].detach()
            if avg.dtype.is_floating_point:
                avg_f.append(avg)
                new_f.append(new if new.dtype == avg.dtype else new.to(avg.dtype))
            else:
                avg.copy_(new)
        if avg_f:
            # avg + (1 - d) * (new - avg) == d * avg + (1 - d) * new
            torch._foreach_lerp_(avg_f, new_f, 1.0 - d)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
