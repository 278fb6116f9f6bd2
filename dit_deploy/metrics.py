"""Referring-segmentation metrics (RIS convention), numpy only.

Per expression, at the original resolution: IoU = (I + 1e-10) / (U + 1e-10), exactly as the
authors' ``mask_iou`` (so an empty prediction against an empty ground truth scores 1.0).
Over a split: mIoU = mean IoU, oIoU = sum I / sum U, prec@X = fraction of expressions with
IoU > X (strictly). All values are fractions in [0, 1]; reports multiply by 100.

prec@X compares the exact ratio, ``I / U > X`` in integer arithmetic (U = 0 counts as IoU 1),
not the float with the epsilon: the authors' ``(I + 1e-10) / (U + 1e-10) > X`` lifts an exact
tie such as I/U = 4/8 just above 0.5 and counts it. Only exact ties differ.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from .errors import InputError

EPS = 1e-10
PREC_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> tuple[float, int, int]:
    """IoU of one prediction against its ground truth.

    Args:
        pred: (H, W) bool, or numbers where foreground is ``> 0`` (logits, 0/1 masks).
        gt: (H, W) bool, or numbers where foreground is ``> 0.5`` (0/1 or 0/255 masks).

    Returns:
        (iou, intersection, union); intersection and union are pixel counts.

    Raises:
        InputError: the shapes differ.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise InputError(
            f"prediction shape {pred.shape} != ground-truth shape {gt.shape}; "
            "resize the prediction to the original image first."
        )
    p = pred if pred.dtype == np.bool_ else pred > 0
    t = gt if gt.dtype == np.bool_ else gt > 0.5
    inter = int(np.count_nonzero(p & t))
    union = int(np.count_nonzero(p | t))
    return (inter + EPS) / (union + EPS), inter, union


def _above(inter: np.ndarray, union: np.ndarray, x: float) -> np.ndarray:
    """Exact ``inter / union > x`` in integers (x read as the decimal it prints as).

    ``union == 0`` (empty vs empty) is IoU 1.
    """
    frac = Fraction(str(x))
    return np.where(union == 0, frac < 1, inter * frac.denominator > union * frac.numerator)


class RISMetrics:
    """Accumulates per-expression IoU, intersections and unions over a split."""

    def __init__(self) -> None:
        self.ious: list[float] = []
        self.intersections: list[int] = []
        self.unions: list[int] = []

    def __len__(self) -> int:
        return len(self.ious)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> float:
        """Add one expression; returns its IoU (see :func:`mask_iou`)."""
        iou, inter, union = mask_iou(pred, gt)
        self.ious.append(iou)
        self.intersections.append(inter)
        self.unions.append(union)
        return iou

    def merge(self, other: RISMetrics) -> RISMetrics:
        """Append another accumulator's expressions (e.g. from other ranks); returns self."""
        self.ious.extend(other.ious)
        self.intersections.extend(other.intersections)
        self.unions.extend(other.unions)
        return self

    def compute(self) -> dict[str, float]:
        """{'mIoU', 'oIoU', 'prec@0.5', ..., 'prec@0.9', 'count'} as fractions in [0, 1].

        With no expressions every value is 0.0 (and count 0). oIoU is 0.0 when the union
        sum is 0.
        """
        ious = np.asarray(self.ious, dtype=np.float64)
        n = len(ious)
        union = sum(self.unions)
        out: dict[str, float] = {
            "mIoU": float(ious.mean()) if n else 0.0,
            "oIoU": sum(self.intersections) / union if union else 0.0,
        }
        inter = np.asarray(self.intersections, dtype=np.int64)
        unions = np.asarray(self.unions, dtype=np.int64)
        for x in PREC_THRESHOLDS:
            out[f"prec@{x}"] = float(_above(inter, unions, x).mean()) if n else 0.0
        out["count"] = n
        return out


def mask_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Pooled IoU of two sets of masks (same shape, any rank): sum I / sum U, 1.0 when both
    are empty. The one definition of "how much two precisions' masks agree"."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise InputError(f"mask shapes differ: {a.shape} vs {b.shape}")
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


def logits_agreement(a_logits: np.ndarray, b_logits: np.ndarray, threshold: float) -> float:
    """:func:`mask_agreement` of two (B, 1, h, w) low-res logit tensors, thresholded after the
    runtime's x4 upsampling (at input resolution, letterbox included)."""
    from .postprocess import sigmoid, upsample_logits

    a = sigmoid(upsample_logits(a_logits)) > threshold
    b = sigmoid(upsample_logits(b_logits)) > threshold
    return mask_agreement(a, b)
