"""Compare ONNX Runtime (CPU) outputs with PyTorch, output by output (torch-free).

One line per output with its max/mean absolute error; one typed error listing every
output that failed, never just the first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import ValidationError
from ..metrics import logits_agreement


@dataclass(frozen=True)
class Tolerance:
    """An output passes when max|a - b| <= atol + rtol * max|b| (and masks agree)."""

    atol: float = 1e-4
    rtol: float = 1e-4
    min_mask_iou: float = 0.999  # IoU of thresholded full-resolution masks, over the batch


@dataclass(frozen=True)
class OutputCheck:
    name: str
    max_abs: float
    mean_abs: float
    limit: float
    mask_iou: float | None = None  # only for logits
    min_mask_iou: float | None = None

    @property
    def ok(self) -> bool:
        close = self.max_abs <= self.limit
        masks = self.mask_iou is None or self.mask_iou >= (self.min_mask_iou or 0.0)
        return bool(close and masks)

    def line(self) -> str:
        text = (
            f"{self.name:<24} max|d| {self.max_abs:.3e} mean|d| {self.mean_abs:.3e} "
            f"(limit {self.limit:.1e})"
        )
        if self.mask_iou is not None:
            text += f"  mask IoU {self.mask_iou:.5f} (min {self.min_mask_iou})"
        return text + ("  ok" if self.ok else "  FAILED")


def compare_outputs(
    got: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    tol: Tolerance,
    threshold: float,
    prefix: str = "",
) -> list[OutputCheck]:
    checks = []
    for name, ref in reference.items():
        out = got[name].astype(np.float32)
        ref = ref.astype(np.float32)
        if out.shape != ref.shape:
            raise ValidationError(f"{prefix}{name}: shape {out.shape} != reference {ref.shape}")
        diff = np.abs(out - ref)
        iou = logits_agreement(out, ref, threshold) if name == "low_res_logits" else None
        checks.append(
            OutputCheck(
                name=prefix + name,
                max_abs=float(diff.max(initial=0.0)),
                mean_abs=float(diff.mean()) if diff.size else 0.0,
                limit=tol.atol + tol.rtol * float(np.abs(ref).max(initial=0.0)),
                mask_iou=iou,
                min_mask_iou=tol.min_mask_iou if iou is not None else None,
            )
        )
    return checks


def raise_on_failures(checks: list[OutputCheck], what: str) -> None:
    failed = [c for c in checks if not c.ok]
    if failed:
        raise ValidationError(
            f"{what}: {len(failed)} output(s) outside tolerance:\n  "
            + "\n  ".join(c.line() for c in failed)
        )
