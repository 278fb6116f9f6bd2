"""Referring-segmentation datasets: RefCOCO/+/g readers and a synthetic dataset.

numpy + Pillow only (pycocotools is imported when a COCO polygon/RLE mask is decoded); no
torch here: the training package wraps these readers in a ``torch.utils.data.Dataset``.

``open_dataset(path, split)`` recognises:

- the ``refer`` layout: ``<path>/<name>/refs(<split_by>).p`` + ``<path>/<name>/instances.json``
  + ``<path>/images/train2014/`` (also accepted: ``path`` = ``<path>/<name>`` itself). The
  synthetic dataset is written in this layout.
- the authors' preprocessed layout: ``<path>/anns/<name>.json`` + ``<path>/masks/<name>/`` +
  ``<path>/images/train2014/`` (also accepted: ``path`` = the ``.json`` file).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from .preprocessed import PreprocessedReferDataset
from .refer import ReferDataset, available_datasets
from .types import ReferDatasetBase, ReferSample

__all__ = [
    "DatasetError",
    "PreprocessedReferDataset",
    "ReferDataset",
    "ReferDatasetBase",
    "ReferSample",
    "open_dataset",
]

_EXPECTED = (
    "expected a refer layout (<path>/<name>/refs(<split_by>).p + <path>/<name>/instances.json "
    "+ <path>/images/train2014/) or the authors' preprocessed layout (<path>/anns/<name>.json "
    "+ <path>/masks/<name>/<mask_id>.npy + <path>/images/train2014/)"
)


def _pick_name(names: list[str], dataset: str | None, path: Path, kind: str) -> str:
    if dataset is not None:
        if dataset not in names:
            raise DatasetError(
                f"{path} has no {kind} dataset named {dataset!r}; it has: {', '.join(names)}"
            )
        return dataset
    if len(names) > 1:
        raise DatasetError(
            f"{path} holds several {kind} datasets ({', '.join(names)}); pass dataset=... "
            "to choose one"
        )
    return names[0]


def _open_preprocessed(ann_file: Path, split: str) -> PreprocessedReferDataset:
    root = ann_file.parent.parent if ann_file.parent.name == "anns" else ann_file.parent
    mask_dir = root / "masks" / ann_file.stem
    if not mask_dir.is_dir():
        raise DatasetError(
            f"{ann_file} looks like a preprocessed annotation file but {mask_dir} is missing; "
            f"{_EXPECTED}"
        )
    return PreprocessedReferDataset(ann_file, root / "images" / "train2014", mask_dir, split)


def open_dataset(path: str | Path, split: str, dataset: str | None = None) -> ReferDatasetBase:
    """Open one split of the dataset at ``path``, whatever its layout.

    Args:
        path: a refer-layout root (or its ``<root>/<name>`` directory), a preprocessed-layout
            root, or a preprocessed ``anns/<name>.json`` file.
        split: ``train``, ``val``, ``testA``, ``testB``, ``test`` (or ``a+b``).
        dataset: which dataset when ``path`` holds several (``refcoco``, ``synthetic``, ...).

    Raises:
        DatasetError: ``path`` is not a dataset (the message says what layouts are expected),
            or the chosen dataset is broken or lacks ``split``.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"{p} does not exist; {_EXPECTED}")
    if p.is_file():
        if p.suffix == ".json":
            return _open_preprocessed(p, split)
        raise DatasetError(f"{p} is not a dataset: {_EXPECTED}")
    if any(p.glob("refs(*).p")):  # <root>/<name> given
        if dataset is not None and dataset != p.name:
            raise DatasetError(f"{p} holds dataset {p.name!r}, not {dataset!r}")
        return ReferDataset(p.parent, p.name, split)
    names = available_datasets(p)
    if names:
        return ReferDataset(p, _pick_name(names, dataset, p, "refer-layout"), split)
    anns = sorted(f.stem for f in (p / "anns").glob("*.json")) if (p / "anns").is_dir() else []
    if anns:
        name = _pick_name(anns, dataset, p, "preprocessed")
        return _open_preprocessed(p / "anns" / f"{name}.json", split)
    raise DatasetError(f"{p} is not a dataset: {_EXPECTED}")
