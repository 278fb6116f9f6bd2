"""Learning-rate schedule: linear warm-up, then cosine decay to a floor (the authors' recipe).

The schedule is a pure function of the optimiser step, so resuming only needs the step.
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer


def warmup_cosine_lr(
    step: int,
    total_steps: int,
    warmup_steps: int,
    base_lr: float,
    min_lr: float,
    warmup_start_factor: float = 0.01,
) -> float:
    """The learning rate for optimiser step ``step`` (0-based).

    - ``step < warmup_steps``: linear from ``base_lr * warmup_start_factor`` (step 0) towards
      ``base_lr`` (reached at ``step == warmup_steps``);
    - then cosine from ``base_lr`` down to ``min_lr``, reached at ``step == total_steps``
      (and held after it).
    """
    if warmup_steps > 0 and step < warmup_steps:
        frac = step / warmup_steps
        return base_lr * (warmup_start_factor + (1.0 - warmup_start_factor) * frac)
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class WarmupCosineScheduler:
    """Sets every param group's ``lr`` from :func:`warmup_cosine_lr`; call ``step()`` once per
    optimiser step (after ``optimizer.step()``)."""

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int,
        base_lr: float,
        min_lr: float,
        warmup_start_factor: float = 0.01,
    ) -> None:
        self.optimizer = optimizer
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.base_lr = base_lr
        self.min_lr = min_lr
        self.warmup_start_factor = warmup_start_factor
        self.last_step = 0
        self._apply()

    def lr(self, step: int | None = None) -> float:
        return warmup_cosine_lr(
            self.last_step if step is None else step,
            self.total_steps,
            self.warmup_steps,
            self.base_lr,
            self.min_lr,
            self.warmup_start_factor,
        )

    def _apply(self) -> None:
        lr = self.lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_step = int(state["last_step"])
        self._apply()
