"""A precision's graphs against the FP32 graphs, in ONNX Runtime on the CPU, on held-out pairs.

Per layout (split chain, fused graph): low-res logits max/mean |error|, agreement of the
final masks (original resolution, after the runtime's own post-processing) with the FP32
masks, mIoU/oIoU of both against the ground truth, and CPU latency of both chains.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from ..metrics import RISMetrics
from ..postprocess import postprocess_batch
from ..runtime.graph_chain import GraphChain
from .chain import PairInputs
from .samples import Pair, PairSource


@dataclass(frozen=True)
class Floor:
    """The accuracy a precision must keep, or nothing is written.

    ``min_mask_iou``: pooled IoU (sum I / sum U, a fraction in [0, 1]) of the new masks
    against the FP32 masks over all held-out pairs.
    ``max_miou_drop``: largest allowed fall of mIoU against the ground truth, stored as a
    fraction (0.002 = 0.2 points); the command line takes points (:meth:`from_points`).
    ``max_logit_error``: optional; largest max |logit error| relative to the FP32 logits'
    largest magnitude (0.01 = 1%). For models whose masks cannot show a change (random
    weights: every mask is the whole image).
    """

    min_mask_iou: float
    max_miou_drop: float
    max_logit_error: float | None = None

    @classmethod
    def from_points(
        cls,
        min_mask_iou: float,
        max_miou_drop_points: float,
        max_logit_error: float | None = None,
    ) -> Floor:
        """A floor from the command line's units: mIoU drop in points (0.2 = 0.2 points)."""
        return cls(min_mask_iou, max_miou_drop_points / 100.0, max_logit_error)

    @property
    def max_miou_drop_points(self) -> float:
        return self.max_miou_drop * 100.0

    def to_dict(self) -> dict[str, float]:
        """Both units spelled out, so a report cannot be misread."""
        return {
            "min_mask_iou": self.min_mask_iou,
            "max_miou_drop": self.max_miou_drop,
            "max_miou_drop_points": self.max_miou_drop_points,
            "max_logit_error": self.max_logit_error,
        }


# measured on the tiny and ViT-B exports (docs/benchmarks.md, "Precision")
DEFAULT_FLOORS = {
    "fp16": Floor(min_mask_iou=0.98, max_miou_drop=0.01),
    "int8": Floor(min_mask_iou=0.90, max_miou_drop=0.03),
    # BF16 (8-bit mantissa) moves borderline pixels more than FP16: the bundled model keeps
    # 0.9925 mask agreement and -0.10 mIoU points (docs/benchmarks.md, "OpenVINO")
    "bf16": Floor(min_mask_iou=0.99, max_miou_drop=0.005),
}
# the targets of --auto: FP16 masks within 0.1% of FP32, INT8 within 1%; mIoU within 0.2
# points for both (FP16's own error is far below INT8's, so its gate is ten times tighter)
AUTO_FLOORS = {
    "fp16": Floor(min_mask_iou=0.999, max_miou_drop=0.002),
    "int8": Floor(min_mask_iou=0.99, max_miou_drop=0.002),
}


def default_floor(precision: str, auto: bool = False) -> Floor:
    """The gates a precision is held to when none are given (``--auto``: the search's targets;
    an execution precision such as bf16 has no search and keeps its own)."""
    if auto and precision in AUTO_FLOORS:
        return AUTO_FLOORS[precision]
    return DEFAULT_FLOORS[precision]


@dataclass
class LayoutReport:
    """One layout's precision graphs against its FP32 graphs."""

    layout: str
    pairs: int
    logits_max_abs: float
    logits_mean_abs: float
    logits_ref_max: float
    mask_iou: float  # pooled IoU of final masks vs FP32 masks
    mask_iou_mean: float  # mean per-pair IoU vs FP32 masks
    miou_fp32: float
    miou: float
    oiou_fp32: float
    oiou: float
    latency_fp32_ms: float = float("nan")
    latency_ms: float = float("nan")
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def miou_change(self) -> float:
        return self.miou - self.miou_fp32

    def check(self, floor: Floor) -> LayoutReport:
        self.failures = []
        if not np.isfinite(self.logits_max_abs):
            self.failures.append("logits are not finite (NaN/inf: an FP16 overflow?)")
        if self.mask_iou < floor.min_mask_iou:
            self.failures.append(
                f"mask agreement {self.mask_iou:.4f} < floor {floor.min_mask_iou} (--min-mask-iou)"
            )
        if -self.miou_change > floor.max_miou_drop:
            self.failures.append(
                f"mIoU falls {-self.miou_change * 100:.2f} points > "
                f"{floor.max_miou_drop * 100:.2f} allowed (--max-miou-drop)"
            )
        if floor.max_logit_error is not None and self.logits_rel_error > floor.max_logit_error:
            self.failures.append(
                f"max logit error {self.logits_rel_error:.2%} of the FP32 range > "
                f"{floor.max_logit_error:.2%} allowed (--max-logit-error)"
            )
        return self

    @property
    def logits_rel_error(self) -> float:
        """Max |logit error| / max |FP32 logit| (a fraction)."""
        return self.logits_max_abs / self.logits_ref_max if self.logits_ref_max else 0.0

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["ok"] = self.ok
        data["miou_change"] = self.miou_change
        data["logits_rel_error"] = self.logits_rel_error
        return data


def _batches(pairs: Iterable[Pair], size: int) -> Iterable[list[Pair]]:
    batch: list[Pair] = []
    for pair in pairs:
        batch.append(pair)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def compare_layout(
    layout: str,
    reference: GraphChain,
    candidate: GraphChain,
    prepare: PairInputs,
    pairs: PairSource,
    threshold: float,
    batch: int = 4,
    progress: Callable[[int], None] | None = None,
) -> LayoutReport:
    """Stream ``pairs`` through both chains of ``layout``; see the module docstring."""
    max_abs, sum_abs, count, ref_max = 0.0, 0.0, 0, 0.0
    agree, truth_ref, truth_new = RISMetrics(), RISMetrics(), RISMetrics()
    for chunk in _batches(pairs, batch):
        feeds, boxes = prepare(chunk)
        ref = reference.logits(feeds)
        new = candidate.logits(feeds)
        diff = np.abs(new.astype(np.float64) - ref)
        max_abs = max(max_abs, float(np.nanmax(diff)) if np.isfinite(diff).all() else np.inf)
        sum_abs += float(diff.sum())
        count += diff.size
        ref_max = max(ref_max, float(np.abs(ref).max()))
        ref_masks = postprocess_batch(ref, boxes, threshold)
        new_masks = postprocess_batch(new, boxes, threshold)
        for pair, r, n in zip(chunk, ref_masks, new_masks, strict=True):
            agree.update(n.mask, r.mask)
            if pair.mask is not None:
                truth_ref.update(r.mask, pair.mask)
                truth_new.update(n.mask, pair.mask)
        if progress:
            progress(len(chunk))
    a, tr, tn = agree.compute(), truth_ref.compute(), truth_new.compute()
    return LayoutReport(
        layout=layout,
        pairs=len(agree),
        logits_max_abs=max_abs,
        logits_mean_abs=sum_abs / max(count, 1),
        logits_ref_max=ref_max,
        mask_iou=a["oIoU"] if sum(agree.unions) else 1.0,
        mask_iou_mean=a["mIoU"],
        miou_fp32=tr["mIoU"],
        miou=tn["mIoU"],
        oiou_fp32=tr["oIoU"],
        oiou=tn["oIoU"],
    )


def chain_latency_ms(
    chain: GraphChain, feeds: dict[str, np.ndarray], runs: int = 10, warmup: int = 2
) -> float:
    """Median wall time of one chain call (ms) on prepared ``feeds``."""
    for _ in range(warmup):
        chain.logits(feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        chain.logits(feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)
