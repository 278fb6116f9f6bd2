"""The DIT/SimREC authors' preprocessed layout (written by their ``data/data_process.py``).

Layout (the authors' config paths)::

    <root>/anns/<dataset>.json              {split: [entry, ...]}
    <root>/masks/<dataset>/<mask_id>.npy    uint8/bool (H, W) mask (the ref's mask)
    <root>/images/train2014/COCO_train2014_%012d.jpg   (from the entry's iid)

An entry is ``{"iid": image_id, "mask_id": ref_id, "bbox": [x, y, w, h], "cat_id": int,
"refs": [sentence, ...]}``. The authors write one entry per ref with ALL its sentences in
``train`` and one entry per sentence elsewhere; either way this reader yields one sample per
(entry, sentence), so counts match the RIS convention. ``ann_id`` is not kept by the layout
(samples carry -1); ``ref_id`` is the ``mask_id``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError
from .types import ListDataset, ReferSample, parse_splits

__all__ = ["NpyMask", "PreprocessedReferDataset"]

_LAYOUT = (
    "<root>/anns/<dataset>.json + <root>/masks/<dataset>/<mask_id>.npy + "
    "<root>/images/train2014/COCO_train2014_<iid:012d>.jpg"
)


class NpyMask:
    """A :class:`~dit_deploy.data.types.MaskSource` reading one ``<mask_id>.npy`` file."""

    __slots__ = ("path",)

    def __init__(self, path: Path) -> None:
        self.path = path

    def decode(self) -> np.ndarray:
        """bool (H, W) mask: nonzero pixels of the stored array ((H, W, 1) is squeezed)."""
        if not self.path.is_file():
            raise DatasetError(
                f"mask file is missing: {self.path}; expected masks as {_LAYOUT} (the authors' "
                "data_process.py writes them with --generate_mask)"
            )
        try:
            m = np.load(self.path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot read mask {self.path}: {e}") from e
        if m.ndim == 3 and m.shape[-1] == 1:
            m = m[..., 0]
        if m.ndim != 2:
            raise DatasetError(f"mask {self.path} has shape {m.shape}; expected (H, W)")
        return m != 0

    def __getstate__(self) -> Path:
        return self.path

    def __setstate__(self, state: Path) -> None:
        self.path = state


class PreprocessedReferDataset(ListDataset):
    """One split of the authors' preprocessed annotations; one sample per (entry, sentence).

    Args:
        ann_file: ``<root>/anns/<dataset>.json``.
        image_dir: directory of ``COCO_train2014_%012d.jpg`` images.
        mask_dir: directory of ``<mask_id>.npy`` masks.
        split: a key of the annotation file (``train``, ``val``, ``testA``, ... or ``a+b``).

    Raises:
        DatasetError: the annotation file is missing or malformed, or the split is absent.
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_dir: str | Path,
        mask_dir: str | Path,
        split: str = "val",
    ) -> None:
        ann_file = Path(ann_file).expanduser()
        if not ann_file.is_file():
            raise DatasetError(f"annotation file {ann_file} does not exist; expected {_LAYOUT}")
        try:
            with ann_file.open("rb") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot read {ann_file}: {e}") from e
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise DatasetError(
                f"{ann_file} is not a preprocessed annotation file: expected "
                "{split: [{iid, mask_id, bbox, refs}, ...]}"
            )
        self.ann_file = ann_file
        self.image_dir = Path(image_dir).expanduser()
        self.mask_dir = Path(mask_dir).expanduser()
        self.available_splits: list[str] = sorted(data)
        wanted = parse_splits(split, self.available_splits, str(ann_file))
        samples: list[ReferSample] = []
        for s in wanted:
            for entry in data[s]:
                samples.extend(self._entry_samples(entry, s))
        super().__init__(ann_file.stem, split, samples)

    def _entry_samples(self, entry: Any, split: str) -> list[ReferSample]:
        try:
            iid = int(entry["iid"])
            mask_id = int(entry["mask_id"])
            refs = entry["refs"]
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(
                f"{self.ann_file}: malformed entry in split {split!r}: {e!r}; an entry needs "
                "iid, mask_id and refs"
            ) from e
        if isinstance(refs, str):
            refs = [refs]
        source = NpyMask(self.mask_dir / f"{mask_id}.npy")
        image_path = self.image_dir / f"COCO_train2014_{iid:012d}.jpg"
        return [
            ReferSample(
                image_path=image_path,
                image_id=iid,
                ref_id=mask_id,
                ann_id=-1,
                sentence=str(sent),
                split=split,
                mask_source=source,
            )
            for sent in refs
        ]
