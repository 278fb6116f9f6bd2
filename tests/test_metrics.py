"""RIS metrics on small masks with hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest

from dit_deploy.errors import InputError
from dit_deploy.metrics import RISMetrics, mask_iou


def _mask(shape: tuple[int, int], *boxes: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros(shape, bool)
    for r0, r1, c0, c1 in boxes:
        m[r0:r1, c0:c1] = True
    return m


def test_mask_iou_counts() -> None:
    gt = _mask((4, 4), (0, 2, 0, 2))  # 4 px
    pred = _mask((4, 4), (0, 2, 1, 3))  # 4 px, 2 shared
    iou, inter, union = mask_iou(pred, gt)
    assert (inter, union) == (2, 6)
    assert iou == pytest.approx(2 / 6)
    assert isinstance(inter, int) and isinstance(union, int)


def test_mask_iou_thresholds_of_numeric_inputs() -> None:
    # pred: foreground where > 0 (logits / probabilities); gt: where > 0.5 (0/1 or 0/255).
    pred = np.array([[-1.0, 0.0, 1e-6, 3.0]])
    gt = np.array([[1.0, 0.5, 0.51, 255.0]])
    _, inter, union = mask_iou(pred, gt)
    # pred fg = {2, 3}; gt fg = {0, 2, 3}
    assert (inter, union) == (2, 3)


def test_empty_vs_empty_is_one() -> None:
    z = np.zeros((3, 3), bool)
    iou, inter, union = mask_iou(z, z)
    assert iou == 1.0 and (inter, union) == (0, 0)
    iou, _, _ = mask_iou(z, _mask((3, 3), (0, 1, 0, 1)))
    assert iou == pytest.approx(1e-10)  # (0 + eps) / (1 + eps)


def test_shape_mismatch() -> None:
    with pytest.raises(InputError, match=r"\(2, 2\) != ground-truth shape \(3, 3\)"):
        mask_iou(np.zeros((2, 2)), np.zeros((3, 3)))


def test_three_expressions() -> None:
    m = RISMetrics()
    # 1) perfect: I = U = 4
    gt1 = _mask((4, 4), (0, 2, 0, 2))
    assert m.update(gt1, gt1) == pytest.approx(1.0)
    # 2) IoU 0.5 exactly: gt 8 px, pred = 4 of them -> I = 4, U = 8
    gt2 = _mask((4, 4), (0, 2, 0, 4))
    assert m.update(_mask((4, 4), (0, 2, 0, 2)), gt2) == pytest.approx(0.5)
    # 3) disjoint: I = 0, U = 2 + 3 = 5
    iou3 = m.update(_mask((4, 4), (3, 4, 0, 2)), _mask((4, 4), (0, 1, 0, 3)))
    assert iou3 == pytest.approx(0.0, abs=1e-10)  # (0 + 1e-10) / (5 + 1e-10)
    r = m.compute()
    assert r["count"] == 3 and len(m) == 3
    assert r["mIoU"] == pytest.approx(0.5)
    assert r["oIoU"] == pytest.approx((4 + 4 + 0) / (4 + 8 + 5))
    # IoU exactly 0.5 does NOT count for prec@0.5 (strictly greater): only the perfect one
    assert r["prec@0.5"] == pytest.approx(1 / 3)
    for x in ("0.6", "0.7", "0.8", "0.9"):
        assert r[f"prec@{x}"] == pytest.approx(1 / 3)
    assert set(r) == {
        "mIoU",
        "oIoU",
        "prec@0.5",
        "prec@0.6",
        "prec@0.7",
        "prec@0.8",
        "prec@0.9",
        "count",
    }


def test_prec_thresholds_between() -> None:
    m = RISMetrics()
    gt = _mask((1, 10), (0, 1, 0, 10))
    for k in (6, 7, 8, 9, 10):  # IoU 0.6 .. 1.0 exactly (prediction = first k pixels)
        m.update(_mask((1, 10), (0, 1, 0, k)), gt)
    r = m.compute()
    # IoU exactly 0.6 is not > 0.6
    assert r["prec@0.5"] == pytest.approx(1.0)
    assert r["prec@0.6"] == pytest.approx(4 / 5)
    assert r["prec@0.9"] == pytest.approx(1 / 5)
    assert r["mIoU"] == pytest.approx(0.8)


def test_tie_differs_from_float_with_epsilon() -> None:
    # The authors' float (4 + 1e-10) / (8 + 1e-10) is just above 0.5; we compare I/U exactly.
    m = RISMetrics()
    iou = m.update(_mask((1, 8), (0, 1, 0, 4)), _mask((1, 8), (0, 1, 0, 8)))
    assert iou > 0.5 and iou == pytest.approx(0.5)
    assert m.compute()["prec@0.5"] == 0.0


def test_merge_equals_single_accumulator() -> None:
    rng = np.random.default_rng(0)
    pairs = [(rng.random((8, 8)) > 0.5, rng.random((8, 8)) > 0.5) for _ in range(6)]
    whole, a, b = RISMetrics(), RISMetrics(), RISMetrics()
    for i, (p, g) in enumerate(pairs):
        whole.update(p, g)
        (a if i % 2 else b).update(p, g)
    merged = a.merge(b).compute()
    expected = whole.compute()
    assert merged.keys() == expected.keys()
    for k, v in expected.items():
        assert merged[k] == pytest.approx(v)


def test_empty_accumulator_and_empty_split() -> None:
    assert RISMetrics().compute()["count"] == 0
    assert RISMetrics().compute()["mIoU"] == 0.0
    m = RISMetrics()
    z = np.zeros((2, 2), bool)
    m.update(z, z)
    r = m.compute()
    assert r["mIoU"] == 1.0 and r["oIoU"] == 0.0 and r["prec@0.9"] == 1.0
