"""``torch.utils.data.Dataset`` adapters over the referring-segmentation readers.

Training samples get the authors' augmentations (``datasets/transforms.py`` of wysnzzzz/DIT),
in their order, drawn from a generator seeded by ``(seed, epoch, index)`` (identical for any
number of loader workers, and after a resume):

1. multi-scale: the long side becomes ``(512 - 32k) * S / 512``, k uniform in 0..6 (image
   bilinear; the 0/1 mask bilinear too, kept soft at the edges or thresholded);
2. colour jitter with probability ``jitter_prob``: brightness, contrast, saturation each in
   ``[1 - x, 1 + x]``, in a random order (no hue jitter: colour words must stay true);
3. Gaussian blur (``blur_prob``; off in the authors' recipe);
4. horizontal flip (``flip_prob``) of image and mask, swapping "left"/"right" in the
   expression (as the authors' substring replace, or as words);
5. normalise and centre on the S x S zero canvas exactly as :func:`letterbox` does.

With ``sample_unit="object"`` (the authors) one training sample is one referred object, and
each epoch draws one of its expressions at random. The target is the ground-truth mask
carried through the same geometry: float (S, S) in [0, 1] at input resolution. Evaluation
samples are one per expression, use the shared :func:`letterbox`, and keep the
original-resolution mask for the metric.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter
from torch.utils.data import Dataset

from ..data.types import ReferDatasetBase
from ..preprocess import Letterbox, letterbox
from ..tokenizer import WordPieceTokenizer
from .config import AugmentConfig

_LEFT_RIGHT = re.compile(r"\b(left|right)", flags=re.IGNORECASE)


def swap_left_right(text: str, mode: str = "word") -> str:
    """Swap "left" and "right" in an expression (what a horizontal flip does to its meaning).

    ``word``: the words and their prefixes ("leftmost" <-> "rightmost"), case kept.
    ``substring``: the authors' ``str.replace`` of lower-case substrings, which also turns
    "bright" into "bleft" and leaves "Left" alone.
    """
    if mode == "substring":
        return text.replace("right", "\0").replace("left", "right").replace("\0", "left")

    def repl(m: re.Match[str]) -> str:
        word = m.group(1)
        new = "right" if word.lower() == "left" else "left"
        return new.upper() if word.isupper() else new.capitalize() if word[0].isupper() else new

    return _LEFT_RIGHT.sub(repl, text)


def scale_choices(input_size: int, scales: int) -> list[int]:
    """Long sides of the multi-scale augmentation: (512 - 32k) * input_size / 512."""
    return [max(16, round((512 - 32 * k) * input_size / 512)) for k in range(scales)]


def _place(
    image: np.ndarray, mask: np.ndarray, size: int, mean: np.ndarray, std: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Normalise ``image`` (h, w, 3) uint8 and centre it and ``mask`` (h, w) float in [0, 1]
    on size x size canvases."""
    h, w = mask.shape
    top = round((size - h) / 2.0 - 0.1)
    left = round((size - w) / 2.0 - 0.1)
    x = (image.astype(np.float32) / np.float32(255.0) - mean) / std
    canvas = np.zeros((3, size, size), dtype=np.float32)
    canvas[:, top : top + h, left : left + w] = x.transpose(2, 0, 1)
    target = np.zeros((size, size), dtype=np.float32)
    target[top : top + h, left : left + w] = mask
    return canvas, target


def augment(
    image: np.ndarray,
    mask: np.ndarray,
    text: str,
    size: int,
    aug: AugmentConfig,
    rng: np.random.Generator,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> tuple[np.ndarray, np.ndarray, str]:
    """One augmented training sample (the steps of the module docstring, in that order).

    Args:
        image: uint8 (H, W, 3) RGB. mask: bool (H, W). text: the expression.
        size: the model's input size S.

    Returns:
        image float32 (3, S, S) normalised, target float32 (S, S) in [0, 1], the text.
    """
    pil = Image.fromarray(image)
    h, w = mask.shape
    long_side = size
    if aug.multi_scale:
        choices = scale_choices(size, aug.scales)
        long_side = choices[int(rng.integers(len(choices)))]
    r = long_side / max(h, w)
    new_w, new_h = max(1, round(w * r)), max(1, round(h * r))
    target = np.ascontiguousarray(mask).astype(np.float32)
    if (new_h, new_w) != (h, w):
        pil = pil.resize((new_w, new_h), Image.Resampling.BILINEAR)
        m = Image.fromarray(np.ascontiguousarray(mask).astype(np.uint8) * 255)
        resized = np.asarray(m.resize((new_w, new_h), Image.Resampling.BILINEAR))
        if aug.soft_target:
            target = resized.astype(np.float32) / np.float32(255.0)
        else:
            target = (resized >= 128).astype(np.float32)
    if aug.color_jitter > 0 and rng.random() < aug.jitter_prob:
        j = aug.color_jitter
        enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
        order = rng.permutation(3) if aug.jitter_random_order else range(3)
        for k in order:
            pil = enhancers[int(k)](pil).enhance(float(rng.uniform(1.0 - j, 1.0 + j)))
    if aug.blur_prob > 0 and rng.random() < aug.blur_prob:
        pil = pil.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(*aug.blur_sigma))))
    if rng.random() < aug.flip_prob:
        pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        target = target[:, ::-1]
        text = swap_left_right(text, aug.flip_text)
    canvas, target = _place(
        np.asarray(pil), target, size, np.asarray(mean, np.float32), np.asarray(std, np.float32)
    )
    return canvas, target, text


def object_groups(refer: ReferDatasetBase, limit: int) -> list[list[int]]:
    """Indices of the first ``limit`` samples grouped by referred object (split, ref_id),
    in order of first appearance: one group per object, one index per expression."""
    groups: dict[tuple[str, int, int], list[int]] = {}
    for i in range(limit):
        s = refer[i]
        groups.setdefault((s.split, s.image_id, s.ref_id), []).append(i)
    return list(groups.values())


def letterbox_mask(mask: np.ndarray, lb: Letterbox) -> np.ndarray:
    """The ground-truth mask carried to the letterboxed input: float32 (S, S) in {0, 1}."""
    m = Image.fromarray(np.ascontiguousarray(mask).astype(np.uint8) * 255)
    if (lb.new_h, lb.new_w) != mask.shape:
        m = m.resize((lb.new_w, lb.new_h), Image.Resampling.BILINEAR)
    out = np.zeros((lb.size, lb.size), dtype=np.float32)
    out[lb.top : lb.top + lb.new_h, lb.left : lb.left + lb.new_w] = np.asarray(m) >= 128
    return out


@dataclass
class TrainItem:
    image: np.ndarray  # (3, S, S) float32
    input_ids: np.ndarray  # (L,) int64
    attention_mask: np.ndarray  # (L,) int64
    target: np.ndarray  # (S, S) float32
    text: str


@dataclass
class EvalItem:
    image: np.ndarray  # (3, S, S) float32
    input_ids: np.ndarray  # (L,) int64
    attention_mask: np.ndarray  # (L,) int64
    gt_mask: np.ndarray  # (H, W) bool, original resolution
    letterbox: Letterbox
    text: str


class ReferTorchDataset(Dataset):
    """(image, expression, mask) samples of a reader, ready for the network.

    Args:
        refer: a split of a reader (``open_dataset(...)``).
        tokenizer: the model's tokenizer.
        input_size: S.
        train: augment (:func:`augment`) and return :class:`TrainItem`; else letterbox only
            and return :class:`EvalItem`.
        constant_text: replace every expression by this text (text-blind baseline).
        max_samples: use only the first N samples (expressions).
        sample_unit: ``object`` (training only): one item per referred object, with one of
            its expressions drawn per (seed, epoch, item); ``expression``: one per expression.
    """

    def __init__(
        self,
        refer: ReferDatasetBase,
        tokenizer: WordPieceTokenizer,
        input_size: int,
        *,
        train: bool,
        augment: AugmentConfig | None = None,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        seed: int = 0,
        constant_text: str | None = None,
        max_samples: int | None = None,
        sample_unit: str = "expression",
    ) -> None:
        self.refer = refer
        self.tokenizer = tokenizer
        self.input_size = input_size
        self.train = train
        self.aug = augment or AugmentConfig()
        self.mean, self.std = mean, std
        self.seed = seed
        self.epoch = 0
        self.constant_text = constant_text
        n = len(refer) if max_samples is None else min(len(refer), max_samples)
        self.groups = object_groups(refer, n) if train and sample_unit == "object" else None
        self.length = n if self.groups is None else len(self.groups)

    def set_epoch(self, epoch: int) -> None:
        """Augmentations depend on (seed, epoch, index); call before each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> TrainItem | EvalItem:
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.train else None
        if self.groups is not None and rng is not None:
            group = self.groups[index]
            sample = self.refer[group[int(rng.integers(len(group)))]]
        else:
            sample = self.refer[index]
        image, mask = sample.load_image(), sample.mask()
        text = self.constant_text if self.constant_text is not None else sample.sentence
        if rng is not None:
            arr, target, text = augment(
                image, mask, text, self.input_size, self.aug, rng, self.mean, self.std
            )
            enc = self.tokenizer.encode(text)
            return TrainItem(arr, enc.input_ids, enc.attention_mask, target, text)
        arr, lb = letterbox(image, self.input_size, self.mean, self.std)
        enc = self.tokenizer.encode(text)
        return EvalItem(arr, enc.input_ids, enc.attention_mask, mask, lb, text)


def collate_train(items: list[TrainItem]) -> dict[str, Any]:
    """-> image (B,3,S,S) f32, input_ids / attention_mask (B,L) i64, target (B,1,S,S) f32."""
    return {
        "image": torch.from_numpy(np.stack([i.image for i in items])),
        "input_ids": torch.from_numpy(np.stack([i.input_ids for i in items])),
        "attention_mask": torch.from_numpy(np.stack([i.attention_mask for i in items])),
        "target": torch.from_numpy(np.stack([i.target for i in items]))[:, None],
        "text": [i.text for i in items],
    }


def collate_eval(items: list[EvalItem]) -> dict[str, Any]:
    """-> tensors as :func:`collate_train` plus lists ``gt_mask`` (H, W) bool and ``letterbox``."""
    return {
        "image": torch.from_numpy(np.stack([i.image for i in items])),
        "input_ids": torch.from_numpy(np.stack([i.input_ids for i in items])),
        "attention_mask": torch.from_numpy(np.stack([i.attention_mask for i in items])),
        "gt_mask": [i.gt_mask for i in items],
        "letterbox": [i.letterbox for i in items],
        "text": [i.text for i in items],
    }
