"""From the decoder's low-resolution logits to a mask on the original image (numpy only).

The path follows the authors' evaluation code:

1. ``nn.UpsamplingBilinear2d(scale_factor=4)`` (bilinear, align_corners=True):
   (B, 1, S/4, S/4) -> (B, 1, S, S) logits at input resolution;
2. ``binary = sigmoid(logits) > threshold`` (strictly greater; DIT: 0.35) as float32;
3. crop the letterbox region and resize it to the original (h, w) with OpenCV's
   ``cv2.resize(..., INTER_LINEAR)`` semantics (reimplemented here, no cv2 needed);
4. foreground where the resized value > 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .preprocess import Letterbox

DEFAULT_THRESHOLD = 0.35
UPSAMPLE_FACTOR = 4


@dataclass
class MaskResult:
    """One predicted mask.

    Attributes:
        mask: bool (orig_h, orig_w), True on the referred object.
        score: confidence in [0, 1] = the mean sigmoid probability over the pixels predicted
            foreground (probability > threshold) at input resolution inside the letterbox;
            0.0 when no pixel is foreground. Not a calibrated probability of correctness.
        logits: float32 (S, S) logits at input resolution, when asked for; else None.
        tokens: the word pieces the model read (``[CLS] ... [SEP]``, truncated as the model
            was fed); ``[UNK]`` marks a word outside the model's vocabulary. Set by the
            runtime's ``Predictor``; None elsewhere.
    """

    mask: np.ndarray
    score: float
    logits: np.ndarray | None = None
    tokens: list[str] | None = None


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function, same shape and float dtype as ``x``."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def _align_corners_taps(
    n_in: int, n_out: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps with align_corners=True: src = dst * (n_in-1)/(n_out-1) -> (i0, i1, w0, w1).

    Scale, source positions and weights are computed in float32 like PyTorch's CPU kernel, so
    the rounding of the sampling positions (which matters for large outputs) is the same;
    weights are returned as float64 for the accumulation.
    """
    scale = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
    src = scale * np.arange(n_out, dtype=np.float32)
    i0 = np.minimum(src.astype(np.int64), n_in - 1)  # src >= 0: truncation == floor
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    lam0 = np.float32(1) - lam1
    return i0, i1, lam0.astype(np.float64), lam1.astype(np.float64)


def upsample_logits(low_res: np.ndarray, factor: int = UPSAMPLE_FACTOR) -> np.ndarray:
    """x``factor`` bilinear upsampling with align_corners=True (``nn.UpsamplingBilinear2d``).

    Args:
        low_res: float (..., h, w), e.g. (B, 1, h, w) or (h, w).

    Returns:
        float32 (..., h * factor, w * factor).
    """
    x = np.asarray(low_res)
    if x.ndim < 2 or 0 in x.shape[-2:]:
        raise InputError(f"upsample_logits needs (..., h, w) with h, w > 0, got {x.shape}")
    h, w = x.shape[-2:]
    # two-tap gathers with float64 accumulation and one rounding to float32 at the end. Not a
    # matmul with the (sparse) interpolation matrices: that calls multi-threaded BLAS, whose
    # threads, on a busy CPU, wait a scheduler slice (4-8 ms) for a sub-millisecond product
    r0, r1, a0, a1 = _align_corners_taps(h, h * factor)
    x = x.astype(np.float64)
    x = x[..., r0, :] * a0[:, None] + x[..., r1, :] * a1[:, None]
    c0, c1, b0, b1 = _align_corners_taps(w, w * factor)
    return (x[..., c0] * b0 + x[..., c1] * b1).astype(np.float32)


def _half_pixel_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV INTER_LINEAR taps: src = (dst + 0.5) * n_in / n_out - 0.5, clamped to the edges.

    Positions are computed in float64 and only the weight is rounded to float32, which is what
    the x86 ``opencv-python`` wheels (IPP-accelerated float32 resize) return: when ``src`` is an
    integer in exact arithmetic the float64 rounding can leave a ~1e-15 weight on the next row,
    and after "> 0" that decides whether a boundary row of the mask is foreground. (OpenCV's
    generic C++ path, e.g. with ``cv2.setUseOptimized(False)``, rounds ``src`` to float32 first
    and drops such weights; values still agree to ~1e-7.)
    """
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    i0 = np.floor(src).astype(np.int64)
    frac = (src - i0).astype(np.float32)
    frac[i0 < 0] = 0
    i0 = np.maximum(i0, 0)
    past_end = i0 >= n_in - 1
    i0[past_end] = n_in - 1
    frac[past_end] = 0
    return i0, np.minimum(i0 + 1, n_in - 1), frac


def resize_bilinear(array2d: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """``cv2.resize(a, (out_w, out_h), interpolation=cv2.INTER_LINEAR)`` for a float 2-D array.

    Half-pixel centres, edge clamping, no antialiasing. Separable two-tap gathers (rows, then
    columns) keep the cost O(out_h * out_w) even for large originals.

    Returns:
        float32 (out_h, out_w).
    """
    a = np.asarray(array2d, dtype=np.float32)
    if a.ndim != 2 or 0 in a.shape or out_h <= 0 or out_w <= 0:
        raise InputError(
            f"resize_bilinear needs a non-empty 2-D array and a positive size, "
            f"got {a.shape} -> ({out_h}, {out_w})"
        )
    r0, r1, fr = _half_pixel_taps(a.shape[0], out_h)
    a = a[r0] * (1 - fr)[:, None] + a[r1] * fr[:, None]
    c0, c1, fc = _half_pixel_taps(a.shape[1], out_w)
    return a[:, c0] * (1 - fc) + a[:, c1] * fc


def logits_to_mask(
    logits_full: np.ndarray,
    letterbox: Letterbox,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    keep_logits: bool = False,
) -> MaskResult:
    """Turn (S, S) logits at input resolution into a mask on the original image.

    ``binary = sigmoid(logits) > threshold`` (float32), crop
    ``[top:top+new_h, left:left+new_w]``, :func:`resize_bilinear` to (orig_h, orig_w),
    foreground where the result > 0. See :class:`MaskResult` for ``score``.
    """
    logits = np.asarray(logits_full, dtype=np.float32)
    lb = letterbox
    if logits.shape != (lb.size, lb.size):
        raise InputError(
            f"logits have shape {logits.shape}; the letterbox expects "
            f"({lb.size}, {lb.size}). Upsample the low-res logits first."
        )
    probs = sigmoid(logits[lb.top : lb.top + lb.new_h, lb.left : lb.left + lb.new_w])
    fg = probs > np.float32(threshold)
    score = float(probs[fg].mean()) if fg.any() else 0.0
    resized = resize_bilinear(fg.astype(np.float32), lb.orig_h, lb.orig_w)
    return MaskResult(resized > 0, score, logits if keep_logits else None)


def postprocess_batch(
    low_res: np.ndarray,
    letterboxes: Sequence[Letterbox],
    threshold: float = DEFAULT_THRESHOLD,
    *,
    keep_logits: bool = False,
) -> list[MaskResult]:
    """(B, 1, h, w) low-res logits + B letterboxes -> B :class:`MaskResult`."""
    low_res = np.asarray(low_res)
    if low_res.ndim != 4 or low_res.shape[1] != 1 or low_res.shape[0] != len(letterboxes):
        raise InputError(
            f"postprocess_batch needs (B, 1, h, w) logits for {len(letterboxes)} "
            f"letterboxes, got {low_res.shape}"
        )
    full = upsample_logits(low_res)[:, 0]
    return [
        logits_to_mask(f, lb, threshold, keep_logits=keep_logits)
        for f, lb in zip(full, letterboxes, strict=True)
    ]
