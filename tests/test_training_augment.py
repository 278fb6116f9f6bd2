"""The authors' augmentations and sampling: one sample per object with a random expression,
colour jitter probability and order, soft mask edges, the authors' left/right replace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

from dit_deploy.data.types import ListDataset, ReferSample  # noqa: E402
from dit_deploy.tokenizer import WordPieceTokenizer  # noqa: E402
from dit_deploy.training.config import AugmentConfig  # noqa: E402
from dit_deploy.training.dataset import ReferTorchDataset, augment, swap_left_right  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NONE = AugmentConfig(multi_scale=False, color_jitter=0.0, blur_prob=0.0, flip_prob=0.0)


class _Box:
    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w

    def decode(self) -> np.ndarray:
        m = np.zeros((self.h, self.w), dtype=bool)
        m[5:30, 10:40] = True
        return m


def _refer(tmp_path: Path) -> ListDataset:
    """Two objects: ref 1 with three expressions, ref 2 with one."""
    img = tmp_path / "a.png"
    Image.fromarray(np.full((48, 64, 3), 120, np.uint8)).save(img)
    texts = [(1, "the left one"), (1, "the red square"), (1, "a small circle"), (2, "the cup")]
    samples = [ReferSample(img, 7, ref, 70 + ref, t, "train", _Box(48, 64)) for ref, t in texts]
    return ListDataset("toy", "train", samples)


def _tokenizer() -> WordPieceTokenizer:
    return WordPieceTokenizer.from_vocab_file(Path(__file__).parent / "fixtures" / "tiny_vocab.txt")


def test_one_sample_per_object_with_a_random_expression(tmp_path: Path) -> None:
    refer = _refer(tmp_path)
    kw = dict(train=True, augment=NONE, seed=3)
    per_object = ReferTorchDataset(refer, _tokenizer(), 64, sample_unit="object", **kw)
    per_expr = ReferTorchDataset(refer, _tokenizer(), 64, sample_unit="expression", **kw)
    assert len(per_object) == 2 and len(per_expr) == 4
    drawn = set()
    for epoch in range(12):
        per_object.set_epoch(epoch)
        drawn.add(per_object[0].text)
        assert per_object[1].text == "the cup"
    assert drawn == {"the left one", "the red square", "a small circle"}
    per_object.set_epoch(5)
    assert per_object[0].text == per_object[0].text  # a pure function of (seed, epoch, index)
    # evaluation stays one sample per expression
    assert len(ReferTorchDataset(refer, _tokenizer(), 64, train=False)) == 4


def test_colour_jitter_probability_and_random_order() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), dtype=bool)
    base, _, _ = augment(image, mask, "x", 32, NONE, np.random.default_rng(0), MEAN, STD)
    never = AugmentConfig(
        multi_scale=False, color_jitter=0.4, jitter_prob=0.0, blur_prob=0.0, flip_prob=0.0
    )
    authors = AugmentConfig(multi_scale=False, blur_prob=0.0, flip_prob=0.0)  # p = 0.8
    assert all(
        np.array_equal(
            augment(image, mask, "x", 32, never, np.random.default_rng(s), MEAN, STD)[0], base
        )
        for s in range(5)
    )
    changed = [
        not np.array_equal(
            augment(image, mask, "x", 32, authors, np.random.default_rng(s), MEAN, STD)[0], base
        )
        for s in range(200)
    ]
    assert 0.7 < np.mean(changed) < 0.9  # p = 0.8


def test_colour_jitter_order_is_random(monkeypatch) -> None:
    import dit_deploy.training.dataset as ds

    calls: list[str] = []

    def recorder(name):
        class Enhancer:
            def __init__(self, img):
                self.img = img

            def enhance(self, factor):
                calls.append(name)
                return self.img

        return Enhancer

    class FakeEnhance:
        Brightness, Contrast, Color = (recorder(n) for n in ("b", "c", "s"))

    monkeypatch.setattr(ds, "ImageEnhance", FakeEnhance)
    image, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), bool)
    always = AugmentConfig(multi_scale=False, jitter_prob=1.0, blur_prob=0.0, flip_prob=0.0)
    orders = set()
    for seed in range(30):
        calls.clear()
        augment(image, mask, "x", 8, always, np.random.default_rng(seed), MEAN, STD)
        orders.add("".join(calls))
    assert len(orders) == 6  # all permutations of brightness, contrast, saturation
    fixed = AugmentConfig(**{**always.__dict__, "jitter_random_order": False})
    calls.clear()
    augment(image, mask, "x", 8, fixed, np.random.default_rng(0), MEAN, STD)
    assert "".join(calls) == "bcs"


def test_soft_and_hard_targets_after_resize() -> None:
    image = np.full((60, 90, 3), 100, np.uint8)
    mask = np.zeros((60, 90), dtype=bool)
    mask[10:41, 20:71] = True
    soft_cfg = AugmentConfig(scales=7, color_jitter=0.0, blur_prob=0.0, flip_prob=0.0)
    hard_cfg = AugmentConfig(**{**soft_cfg.__dict__, "soft_target": False})
    for seed in range(20):  # some draw a smaller scale (a resize)
        _, soft, _ = augment(image, mask, "x", 64, soft_cfg, np.random.default_rng(seed), MEAN, STD)
        _, hard, _ = augment(image, mask, "x", 64, hard_cfg, np.random.default_rng(seed), MEAN, STD)
        assert set(np.unique(hard)) <= {0.0, 1.0}
        assert soft.min() >= 0 and soft.max() <= 1
        assert np.array_equal(soft >= 0.5, hard == 1)  # the same mask, thresholded
        if np.any((soft > 0) & (soft < 1)):
            break
    else:
        pytest.fail("no resize produced soft edges")


def test_flip_swaps_text_like_the_authors() -> None:
    assert swap_left_right("bright left sign right", "substring") == "bleft right sign left"
    assert swap_left_right("Left man", "substring") == "Left man"  # case-sensitive replace
    assert swap_left_right("bright left sign", "word") == "bright right sign"
    flip = AugmentConfig(multi_scale=False, color_jitter=0.0, flip_prob=1.0)
    image = np.zeros((8, 8, 3), np.uint8)
    _, _, text = augment(
        image, np.zeros((8, 8), bool), "leftmost", 8, flip, np.random.default_rng(0), MEAN, STD
    )
    assert text == "rightmost"
