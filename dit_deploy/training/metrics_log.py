"""What rank 0 logs during a run: ``steps.csv``, ``metrics.csv`` and, if installed,
TensorBoard."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Rank-0 CSV + optional TensorBoard; does nothing where ``enabled`` is False."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.out = out
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:  # tensorboard is optional (the `train` extra)
                self.tb = None

    def _append(self, name: str, row: dict[str, Any]) -> None:
        path = self.out / name
        new = not path.exists()
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    def step(self, row: dict[str, Any]) -> None:
        """One optimiser step's row (``steps.csv``; loss, lr, grad_norm to TensorBoard)."""
        if not self.enabled:
            return
        self._append("steps.csv", row)
        if self.tb is not None:
            for k in ("loss", "lr", "grad_norm"):
                if k in row:
                    self.tb.add_scalar(f"train/{k}", row[k], row["step"])

    def epoch(self, row: dict[str, Any]) -> None:
        """One epoch's row (``metrics.csv``; every number to TensorBoard)."""
        if not self.enabled:
            return
        self._append("metrics.csv", row)
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("epoch", "step") and isinstance(v, (int, float)):
                    self.tb.add_scalar(k.replace(":", "/"), v, row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
