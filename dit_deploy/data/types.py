"""Dataset-independent types: one referring sample, and the interface every reader implements.

A sample is cheap: it holds paths and ids, and decodes its image and ground-truth mask only
when asked (:meth:`ReferSample.load_image`, :meth:`ReferSample.mask`). Readers build the full
list of samples of a split once, at construction, so ``len()`` and indexing are O(1).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import DatasetError

__all__ = ["MaskSource", "ReferDatasetBase", "ReferSample"]


@runtime_checkable
class MaskSource(Protocol):
    """Something that decodes one ground-truth mask on demand (COCO polygons/RLE, a .npy file)."""

    def decode(self) -> np.ndarray:
        """Return the mask, bool (H, W), at the original image resolution."""
        ...


@dataclass(frozen=True)
class ReferSample:
    """One (image, referring expression, ground-truth object) triple.

    Attributes:
        image_path: the image file (RGB, grayscale or anything Pillow converts to RGB).
        image_id: the dataset's image id (COCO image id for RefCOCO/+/g).
        ref_id: the referred object's ref id (RefCOCO ``ref_id``; ``mask_id`` in the authors'
            preprocessed layout).
        ann_id: the COCO annotation id of the object; -1 where the layout does not keep it.
        sentence: the referring expression, as stored (RefCOCO's ``sent``: lower-case).
        split: the split the sample belongs to (``train``, ``val``, ``testA``, ...).
        mask_source: decodes the ground-truth mask; excluded from equality and repr.
    """

    image_path: Path
    image_id: int
    ref_id: int
    ann_id: int
    sentence: str
    split: str
    mask_source: MaskSource = field(repr=False, compare=False)

    def mask(self) -> np.ndarray:
        """Decode the ground-truth mask: bool (H, W) at the original image resolution."""
        m = self.mask_source.decode()
        if m.ndim != 2:
            raise DatasetError(
                f"the mask of ref_id={self.ref_id} ({self.image_path.name}) has shape {m.shape}; "
                "expected a 2-D (H, W) mask"
            )
        return m.astype(bool, copy=False)

    def load_image(self) -> np.ndarray:
        """Read the image as uint8 (H, W, 3) RGB.

        Raises:
            DatasetError: the file is missing or Pillow cannot read it.
        """
        return load_rgb(self.image_path, what=f"image of ref_id={self.ref_id}")


def load_rgb(path: Path, what: str = "image") -> np.ndarray:
    """Read ``path`` with Pillow and convert it to uint8 (H, W, 3) RGB."""
    from PIL import Image, UnidentifiedImageError

    from ..preprocess import IMAGE_FORMATS

    if not path.is_file():
        hint = (
            f"the image directory {path.parent} does not exist either"
            if not path.parent.is_dir()
            else f"the image directory {path.parent} exists but has no such file"
        )
        raise DatasetError(
            f"{what} is missing: {path} ({hint}); pass image_dir=... if the images live elsewhere"
        )
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as im:
            return np.array(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as e:
        raise DatasetError(f"{what} cannot be read: {path}: {e}") from e


class ReferDatasetBase(ABC):
    """A split of a referring-segmentation dataset: a sequence of :class:`ReferSample`.

    Attributes:
        name: dataset name (``refcoco``, ``refcoco+``, ``refcocog``, ``synthetic``, ...).
        split: the split(s) this object holds, as requested (``val``, ``train+val``, ...).
    """

    name: str
    split: str

    @abstractmethod
    def __len__(self) -> int:
        """Number of samples: one per (object, expression) pair."""

    @abstractmethod
    def __getitem__(self, index: int) -> ReferSample:
        """The ``index``-th sample (negative indices count from the end)."""

    def __iter__(self) -> Iterator[ReferSample]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, len={len(self)})"


class ListDataset(ReferDatasetBase):
    """A :class:`ReferDatasetBase` backed by a precomputed list of samples."""

    def __init__(self, name: str, split: str, samples: Sequence[ReferSample]) -> None:
        self.name = name
        self.split = split
        self._samples = list(samples)

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> ReferSample:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"dataset indices must be integers, not {type(index).__name__}")
        n = len(self._samples)
        if not -n <= index < n:
            raise IndexError(f"sample index {index} out of range for {n} samples")
        return self._samples[index]


def parse_splits(split: str, available: Sequence[str], where: str) -> list[str]:
    """Split ``"train+val"`` into its parts and check each one is in ``available``.

    Raises:
        DatasetError: a part is not an available split (the message lists the available ones).
    """
    parts = [s.strip() for s in split.split("+")]
    avail = sorted(set(available))
    for p in parts:
        if p not in avail:
            raise DatasetError(
                f"split {p!r} is not in {where}; available splits: {', '.join(avail) or 'none'}"
            )
    return parts
