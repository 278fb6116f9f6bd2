"""Post-processing against torch (UpsamplingBilinear2d) and OpenCV (INTER_LINEAR), tests only."""

from __future__ import annotations

import numpy as np
import pytest

from dit_deploy.errors import InputError
from dit_deploy.postprocess import (
    MaskResult,
    logits_to_mask,
    postprocess_batch,
    resize_bilinear,
    sigmoid,
    upsample_logits,
)
from dit_deploy.preprocess import Letterbox

RNG = np.random.default_rng(0)
LOGIT_035 = float(np.log(0.35 / 0.65))  # sigmoid(LOGIT_035) ~= 0.35


# ------------------------------------------------------------------- upsample
@pytest.mark.parametrize("shape", [(4, 1, 128, 128), (2, 1, 32, 32), (1, 1, 7, 13), (1, 1, 1, 5)])
def test_upsample_equals_torch(shape) -> None:
    torch = pytest.importorskip("torch")
    x = RNG.standard_normal(shape).astype(np.float32) * 10  # logits of realistic magnitude
    ref = torch.nn.UpsamplingBilinear2d(scale_factor=4)(torch.from_numpy(x)).numpy()
    out = upsample_logits(x)
    assert out.shape == ref.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


def test_upsample_2d_input() -> None:
    x = RNG.standard_normal((5, 6)).astype(np.float32)
    out = upsample_logits(x)
    assert out.shape == (20, 24)
    np.testing.assert_allclose(out, upsample_logits(x[None, None])[0, 0])
    assert out[0, 0] == pytest.approx(x[0, 0]) and out[-1, -1] == pytest.approx(x[-1, -1])


# ------------------------------------------------------------------- resize
@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ((128, 128), (480, 640)),
        ((97, 131), (33, 517)),
        ((512, 384), (1000, 751)),
        ((300, 200), (150, 100)),
        ((301, 203), (37, 29)),
        ((5, 7), (5, 7)),
        ((1, 9), (4, 3)),
        ((64, 48), (21, 300)),
    ],
)
def test_resize_bilinear_equals_opencv(src, dst) -> None:
    cv2 = pytest.importorskip("cv2")
    a = RNG.standard_normal(src).astype(np.float32)
    ref = cv2.resize(a, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
    out = resize_bilinear(a, *dst)
    assert out.shape == dst and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


def test_resize_binary_mask_equals_opencv() -> None:
    cv2 = pytest.importorskip("cv2")
    m = (RNG.random((90, 120)) > 0.7).astype(np.float32)
    ref = cv2.resize(m, (433, 311), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(resize_bilinear(m, 311, 433) > 0, ref > 0)


def test_resize_exact_boundary_like_opencv_ipp() -> None:
    # 121 -> 167 rows: output row 83 samples source row 60 exactly (83.5 * 121 / 167 = 60.5);
    # float64 rounding leaves a 7e-15 weight on row 61, as x86 opencv-python (IPP) does.
    cv2 = pytest.importorskip("cv2")
    eye = np.eye(121, dtype=np.float32)
    out = resize_bilinear(eye, 167, 121)
    assert 0 < out[83, 61] < 1e-13
    if not cv2.ipp.useIPP():
        pytest.skip("this OpenCV build resizes float32 without IPP (generic path)")
    ref = cv2.resize(eye, (121, 167), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(out > 0, ref > 0)


def test_resize_masks_match_opencv_after_threshold() -> None:
    cv2 = pytest.importorskip("cv2")
    if not cv2.ipp.useIPP():
        pytest.skip("this OpenCV build resizes float32 without IPP (generic path)")
    rng = np.random.default_rng(1)
    for _ in range(40):
        src = tuple(int(v) for v in rng.integers(1, 150, 2))
        dst = tuple(int(v) for v in rng.integers(1, 400, 2))
        m = (rng.random(src) > 0.6).astype(np.float32)
        ref = cv2.resize(m, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(resize_bilinear(m, *dst) > 0, ref > 0)


def test_resize_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="2-D"):
        resize_bilinear(np.zeros((2, 2, 2), np.float32), 4, 4)
    with pytest.raises(InputError, match="positive size"):
        resize_bilinear(np.zeros((2, 2), np.float32), 0, 4)


# ------------------------------------------------------------------- mask
def test_sigmoid_is_stable() -> None:
    x = np.array([-1000.0, -20.0, 0.0, 20.0, 1000.0], np.float32)
    with np.errstate(over="raise"):
        y = sigmoid(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [0.0, 2.0611537e-09, 0.5, 1.0, 1.0], rtol=1e-6)


def test_logits_to_mask_known_example() -> None:
    # A 4x8 image letterboxed at size 8: new 4x8, top = round(2 - 0.1) = 2, left = 0.
    lb = Letterbox(orig_h=4, orig_w=8, new_h=4, new_w=8, top=2, left=0, size=8)
    logits = np.full((8, 8), -10.0, np.float32)
    logits[2:6, 4:8] = 10.0  # right half of the image region
    logits[0:2, :] = 10.0  # in the padding: must be ignored
    res = logits_to_mask(logits, lb)
    assert isinstance(res, MaskResult)
    assert res.mask.dtype == np.bool_ and res.mask.shape == (4, 8)
    expected = np.zeros((4, 8), bool)
    expected[:, 4:] = True
    np.testing.assert_array_equal(res.mask, expected)
    assert res.score == pytest.approx(float(sigmoid(np.float32(10.0))))
    assert res.logits is None


def test_logits_to_mask_resizes_to_original() -> None:
    # 10 x 20 original -> size 8: new 4x8, top 2. One foreground pixel at crop (1, 1) spreads,
    # after bilinear resize and "> 0", to the original pixels whose taps give it weight > 0.
    lb = Letterbox(orig_h=10, orig_w=20, new_h=4, new_w=8, top=2, left=0, size=8)
    logits = np.full((8, 8), -10.0, np.float32)
    logits[3, 1] = 10.0
    res = logits_to_mask(logits, lb, keep_logits=True)
    assert res.mask.shape == (10, 20)
    np.testing.assert_array_equal(res.logits, logits)  # kept as given: (S, S), input resolution
    rows, cols = np.nonzero(res.mask)
    # src = (r + 0.5) * 0.4 - 0.5 gives crop row 1 a positive weight iff src in (0, 2):
    # r = 0 -> -0.3 (clamped, no), r = 1 -> 0.1, ..., r = 5 -> 1.7, r = 6 -> 2.1 (no).
    assert set(rows) == {1, 2, 3, 4, 5} and set(cols) == {1, 2, 3, 4, 5}
    assert res.mask.sum() == 25


def _logit_with_sigmoid_exactly(p: np.float32) -> np.float32:
    """A float32 logit whose float32 sigmoid is exactly ``p`` (searched around log(p/(1-p)))."""
    x = np.float32(np.log(p / (1 - p)))
    for _ in range(8):
        for cand in (x, *(np.nextafter(x, np.float32(d)) for d in (-1, 1))):
            if sigmoid(np.array([cand], np.float32))[0] == p:
                return cand
        x = np.nextafter(x, np.float32(-1))
    raise AssertionError("no float32 logit maps exactly to p")


def test_threshold_is_strict() -> None:
    lb = Letterbox(2, 2, 2, 2, 0, 0, 2)
    logits = np.full((2, 2), 10.0, np.float32)
    logits[0, 0] = _logit_with_sigmoid_exactly(np.float32(0.35))
    assert not logits_to_mask(logits, lb, threshold=0.35).mask[0, 0]  # 0.35 > 0.35 is False
    assert logits_to_mask(logits, lb, threshold=0.3499).mask[0, 0]
    logits[0, 0] = 0.0  # sigmoid = 0.5 exactly
    assert not logits_to_mask(logits, lb, threshold=0.5).mask[0, 0]
    logits[0, 0] = LOGIT_035 + 1e-3
    assert logits_to_mask(logits, lb).mask[0, 0]  # default threshold 0.35
    logits[0, 0] = LOGIT_035 - 1e-3
    assert not logits_to_mask(logits, lb).mask[0, 0]


def test_empty_prediction_scores_zero() -> None:
    lb = Letterbox(3, 3, 3, 3, 0, 0, 3)
    res = logits_to_mask(np.full((3, 3), -5.0, np.float32), lb)
    assert not res.mask.any() and res.score == 0.0


def test_logits_shape_must_match_letterbox() -> None:
    with pytest.raises(InputError, match=r"expects \(8, 8\)"):
        logits_to_mask(np.zeros((4, 4), np.float32), Letterbox(4, 4, 8, 8, 0, 0, 8))


def test_postprocess_batch() -> None:
    low = RNG.standard_normal((2, 1, 4, 4)).astype(np.float32)
    lbs = [Letterbox(30, 40, 12, 16, 2, 0, 16), Letterbox(16, 16, 16, 16, 0, 0, 16)]
    results = postprocess_batch(low, lbs)
    assert [r.mask.shape for r in results] == [(30, 40), (16, 16)]
    full = upsample_logits(low)
    for r, f, lb in zip(results, full[:, 0], lbs, strict=True):
        np.testing.assert_array_equal(r.mask, logits_to_mask(f, lb).mask)
        assert 0.0 <= r.score <= 1.0
    with pytest.raises(InputError, match=r"\(B, 1, h, w\)"):
        postprocess_batch(low, lbs[:1])


def test_a_long_gallery_title_wraps_inside_the_sheet():
    """A title as the main job writes them ("... (best, median, worst by IoU)") is wrapped
    between words to the sheet's width, not clipped at its edge."""
    import numpy as np

    from dit_deploy.gallery import Example, _font, render, wrap

    title = ("openvino cpu int8 (split): mIoU 60.73 on synthetic/val, examples by IoU "
             "(best, median, worst)")  # fmt: skip
    mask = np.zeros((20, 30), bool)
    mask[5:15, 5:20] = True
    sheet = render([Example(np.zeros((20, 30, 3), np.uint8), "the cup", mask, mask)], title)
    lines = wrap(title, _font(20), sheet.width - 16)
    assert len(lines) >= 2 and " ".join(lines) == title
    assert all(_font(20).getlength(line) <= sheet.width - 16 for line in lines)
