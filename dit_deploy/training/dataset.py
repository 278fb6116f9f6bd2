"""``torch.utils.data.Dataset`` adapters over the referring-segmentation readers.

Training samples get the authors' augmentations, drawn from a generator seeded by
``(seed, epoch, index)`` (identical for any number of loader workers, and after a resume):

1. horizontal flip (``flip_prob``) of image and mask; the expression's "left"/"right" swap
   (also inside "leftmost"/"rightmost": the words are matched as prefixes);
2. colour jitter: brightness, contrast, saturation each in ``[1 - x, 1 + x]`` (no hue jitter:
   colour words must stay true);
3. Gaussian blur (``blur_prob``);
4. multi-scale: the long side becomes ``(512 - 32k) * S / 512``, k uniform in 0..6, then the
   image is normalised and centred on the S x S zero canvas exactly as :func:`letterbox` does.

The target is the ground-truth mask carried through the same geometry: float (S, S) in
{0, 1} at input resolution. Evaluation samples use the shared :func:`letterbox` and keep the
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


def swap_left_right(text: str) -> str:
    """ "the circle left of the square" <-> "... right of ..."; also leftmost <-> rightmost."""

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
    """Normalise ``image`` (h, w, 3) uint8 and centre it and ``mask`` on size x size canvases."""
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
    """One augmented training sample.

    Args:
        image: uint8 (H, W, 3) RGB. mask: bool (H, W). text: the expression.
        size: the model's input size S.

    Returns:
        image float32 (3, S, S) normalised, target float32 (S, S) in {0, 1}, the text.
    """
    pil = Image.fromarray(image)
    if rng.random() < aug.flip_prob:
        pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        mask = mask[:, ::-1]
        text = swap_left_right(text)
    if aug.color_jitter > 0:
        j = aug.color_jitter
        for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            pil = enhancer(pil).enhance(float(rng.uniform(1.0 - j, 1.0 + j)))
    h, w = mask.shape
    long_side = size
    if aug.multi_scale:
        choices = scale_choices(size, aug.scales)
        long_side = choices[int(rng.integers(len(choices)))]
    if aug.blur_prob > 0 and rng.random() < aug.blur_prob:
        # sigma is given at input resolution; convert to the current image's pixels
        sigma = float(rng.uniform(*aug.blur_sigma)) * max(h, w) / long_side
        pil = pil.filter(ImageFilter.GaussianBlur(radius=sigma))
    r = long_side / max(h, w)
    new_w, new_h = max(1, round(w * r)), max(1, round(h * r))
    if (new_h, new_w) != (h, w):
        pil = pil.resize((new_w, new_h), Image.Resampling.BILINEAR)
        m = Image.fromarray(np.ascontiguousarray(mask).astype(np.uint8) * 255)
        mask = np.asarray(m.resize((new_w, new_h), Image.Resampling.BILINEAR)) >= 128
    canvas, target = _place(
        np.asarray(pil), mask, size, np.asarray(mean, np.float32), np.asarray(std, np.float32)
    )
    return canvas, target, text


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
        max_samples: use only the first N samples.
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
        self.length = len(refer) if max_samples is None else min(len(refer), max_samples)

    def set_epoch(self, epoch: int) -> None:
        """Augmentations depend on (seed, epoch, index); call before each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> TrainItem | EvalItem:
        sample = self.refer[index]
        image, mask = sample.load_image(), sample.mask()
        text = self.constant_text if self.constant_text is not None else sample.sentence
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
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
