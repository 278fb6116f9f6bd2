"""RefCOCO / RefCOCO+ / RefCOCOg (and anything else) in the ``refer`` layout.

Layout (as distributed by ``lichengunc/refer`` and used by the DIT authors)::

    <root>/<dataset>/refs(<split_by>).p   pickle: list of refs
    <root>/<dataset>/instances.json       COCO: images, annotations, categories
    <root>/images/train2014/<file_name>   images (file_name from instances.json)

A ref is a dict ``{ref_id, ann_id, image_id, split, sentences: [{sent, raw, tokens, sent_id}],
category_id, file_name}``. Its ``file_name`` is NOT the image file (it carries an ann-id
suffix); the image file name comes from ``instances.json``, falling back to
``COCO_train2014_%012d.jpg``.

Every (ref, sentence) pair is one sample: the RIS convention scores every expression.
"""

from __future__ import annotations

import io
import json
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError
from .types import ListDataset, ReferSample, parse_splits

__all__ = [
    "DEFAULT_SPLIT_BY",
    "KNOWN_SPLITS",
    "CocoSegmentationMask",
    "ReferDataset",
    "decode_coco_segmentation",
    "load_refs_pickle",
]

#: Default ``split_by`` per dataset name (refcocog also has ``google``).
DEFAULT_SPLIT_BY: dict[str, str] = {
    "refcoco": "unc",
    "refcoco+": "unc",
    "refcocog": "umd",
    "refclef": "unc",
    "synthetic": "unc",
}
#: Splits that may appear in a refs file.
KNOWN_SPLITS: tuple[str, ...] = ("train", "val", "testA", "testB", "testC", "test")

_LAYOUT = (
    "<root>/<dataset>/refs(<split_by>).p + <root>/<dataset>/instances.json + "
    "<root>/images/train2014/"
)


# --------------------------------------------------------------------------- pickle


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves no globals except inert builtin containers and scalars.

    Refs files hold only lists, dicts, strings and numbers; anything else (e.g. a reduce to
    ``os.system``) is refused before it can run.
    """

    _ALLOWED = frozenset(
        {
            ("builtins", n)
            for n in (
                "dict",
                "list",
                "tuple",
                "set",
                "frozenset",
                "str",
                "bytes",
                "bytearray",
                "int",
                "float",
                "complex",
                "bool",
            )
        }
        | {("__builtin__", n) for n in ("set", "frozenset", "unicode", "long")}
        | {("collections", "OrderedDict"), ("_codecs", "encode")}
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise _DisallowedGlobal(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


class _DisallowedGlobal(pickle.UnpicklingError):
    """A refs pickle names a global outside the allow-list."""


def load_refs_pickle(path: Path) -> list[dict[str, Any]]:
    """Read a ``refs(*).p`` file without executing code from it.

    Python 2 pickles (the released RefCOCO files) load too: their strings decode as UTF-8.

    Raises:
        DatasetError: the file is unreadable, refers to a disallowed global, or is not a
            list of ref dicts.
    """
    try:
        data = path.read_bytes()
        refs = _RestrictedUnpickler(io.BytesIO(data), encoding="utf-8").load()
    except _DisallowedGlobal as e:
        raise DatasetError(
            f"refusing to load {path}: {e}. A refs file may hold only lists, dicts, strings and "
            "numbers; this one would construct other objects (possibly running code)"
        ) from e
    except pickle.UnpicklingError as e:  # truncated or not a pickle at all
        raise DatasetError(
            f"cannot read refs file {path}: {e}; it is truncated or corrupt, re-download it"
        ) from e
    except (
        OSError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
        UnicodeDecodeError,
    ) as e:
        raise DatasetError(f"cannot read refs file {path}: {type(e).__name__}: {e}") from e
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DatasetError(f"{path} does not hold a list of ref dicts (got {type(refs).__name__})")
    return refs


# --------------------------------------------------------------------------- masks


def decode_coco_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO segmentation to a bool (H, W) mask (union of all parts).

    Args:
        segmentation: polygon list ``[[x0, y0, x1, y1, ...], ...]``, or an RLE dict
            ``{"size": [H, W], "counts": ...}`` with compressed (str/bytes) or uncompressed
            (list of run lengths, column-major) counts.
        height, width: image size, used for polygons and uncompressed RLE.

    Returns:
        bool (H, W) mask, with pycocotools' rasterisation semantics.
    """
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = {
                "size": list(segmentation["size"]),
                "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
            }
    else:
        raise ValueError(f"unknown segmentation type {type(segmentation).__name__}")
    with warnings.catch_warnings():
        # pycocotools' Cython code trips numpy 2's __array__(copy=...) deprecation; harmless.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*__array__")
        return mask_utils.decode(rle).astype(bool)


class CocoSegmentationMask:
    """A :class:`~dit_deploy.data.types.MaskSource` for one COCO annotation's segmentation."""

    __slots__ = ("ann_id", "height", "segmentation", "width")

    def __init__(self, segmentation: Any, height: int, width: int, ann_id: int = -1) -> None:
        self.segmentation = segmentation
        self.height = int(height)
        self.width = int(width)
        self.ann_id = ann_id

    def decode(self) -> np.ndarray:
        """bool (H, W) mask of the annotation."""
        try:
            return decode_coco_segmentation(self.segmentation, self.height, self.width)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise DatasetError(
                f"cannot decode the segmentation of annotation {self.ann_id}: {e}"
            ) from e

    def __getstate__(self) -> tuple[Any, int, int, int]:
        return (self.segmentation, self.height, self.width, self.ann_id)

    def __setstate__(self, state: tuple[Any, int, int, int]) -> None:
        self.segmentation, self.height, self.width, self.ann_id = state


# --------------------------------------------------------------------------- reader


def available_datasets(root: Path) -> list[str]:
    """Names of the sub-directories of ``root`` that hold a ``refs(*).p`` file."""
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("refs(*).p")))


def resolve_split_by(data_dir: Path, dataset: str, split_by: str | None) -> str:
    """Pick the ``split_by`` for ``dataset``: the given one, the default, or the only one present.

    Raises:
        DatasetError: the refs file is missing (names it, the layout and what is present).
    """
    present = sorted(p.name[len("refs(") : -len(").p")] for p in data_dir.glob("refs(*).p"))
    if split_by is None:
        if dataset in DEFAULT_SPLIT_BY:
            split_by = DEFAULT_SPLIT_BY[dataset]
        elif len(present) == 1:
            split_by = present[0]
        elif present:
            raise DatasetError(
                f"{data_dir} has several refs files ({', '.join(present)}); "
                "pass split_by=... to choose one"
            )
        else:
            split_by = "unc"
    if split_by not in present:
        found = (
            f"found {', '.join(f'refs({p}).p' for p in present)}: pass split_by={present[0]!r}"
            if present
            else "no refs(*).p file is there"
        )
        raise DatasetError(
            f"{data_dir} is not a refer layout: refs({split_by}).p is missing ({found}). "
            f"Expected {_LAYOUT}"
        )
    return split_by


def _image_file_name(image: Mapping[str, Any]) -> str:
    name = image.get("file_name")
    return str(name) if name else f"COCO_train2014_{int(image['id']):012d}.jpg"


class ReferDataset(ListDataset):
    """One split of a dataset in the ``refer`` layout; one sample per (ref, sentence).

    Args:
        root: the directory holding ``<dataset>/`` and ``images/``.
        dataset: ``refcoco``, ``refcoco+``, ``refcocog``, ``synthetic`` or any directory
            name under ``root`` holding a refs file.
        split: ``train``, ``val``, ``testA``, ``testB``, ``test`` (or ``a+b``).
        split_by: which ``refs(<split_by>).p``; default ``unc`` (``umd`` for refcocog).
        image_dir: where the images are; default ``<root>/images/train2014``
            (``<root>/images/saiapr_tc-12`` for refclef).

    Raises:
        DatasetError: root missing, dataset not under root, a layout file missing or
            corrupt, refs pointing at absent annotations/images, or the split is absent.
    """

    def __init__(
        self,
        root: str | Path,
        dataset: str = "refcoco",
        split: str = "val",
        split_by: str | None = None,
        image_dir: str | Path | None = None,
    ) -> None:
        root = Path(root).expanduser()
        if not root.exists():
            raise DatasetError(f"dataset root {root} does not exist; expected {_LAYOUT}")
        if not root.is_dir():
            raise DatasetError(f"dataset root {root} is not a directory; expected {_LAYOUT}")
        data_dir = root / dataset
        if not data_dir.is_dir():
            present = available_datasets(root)
            known = ", ".join(sorted(DEFAULT_SPLIT_BY))
            raise DatasetError(
                f"unknown dataset {dataset!r}: {data_dir} does not exist. Datasets under {root}: "
                f"{', '.join(present) or 'none'} (usual names: {known}); expected {_LAYOUT}"
            )
        self.split_by = resolve_split_by(data_dir, dataset, split_by)
        refs_path = data_dir / f"refs({self.split_by}).p"
        instances_path = data_dir / "instances.json"
        if not instances_path.is_file():
            raise DatasetError(
                f"{data_dir} is not a refer layout: instances.json is missing. Expected {_LAYOUT}"
            )
        if image_dir is None:
            image_dir = root / "images" / ("saiapr_tc-12" if dataset == "refclef" else "train2014")
        self.root = root
        self.image_dir = Path(image_dir).expanduser()

        refs = load_refs_pickle(refs_path)
        self.available_splits: list[str] = sorted({str(r.get("split")) for r in refs})
        wanted = parse_splits(split, self.available_splits, f"{refs_path}")
        images, anns = _load_instances(instances_path)
        samples = self._build_samples(refs, set(wanted), images, anns, refs_path)
        super().__init__(dataset, split, samples)

    def _build_samples(
        self,
        refs: list[dict[str, Any]],
        wanted: set[str],
        images: dict[int, dict[str, Any]],
        anns: dict[int, dict[str, Any]],
        refs_path: Path,
    ) -> list[ReferSample]:
        samples: list[ReferSample] = []
        for ref in refs:
            if ref.get("split") not in wanted:
                continue
            try:
                ref_id, ann_id, image_id = (int(ref[k]) for k in ("ref_id", "ann_id", "image_id"))
                sentences = ref["sentences"]
            except (KeyError, TypeError, ValueError) as e:
                raise DatasetError(
                    f"{refs_path}: malformed ref {ref.get('ref_id', '?')}: {e!r}; a ref needs "
                    "ref_id, ann_id, image_id, split and sentences"
                ) from e
            ann = anns.get(ann_id)
            image = images.get(image_id)
            if ann is None or image is None:
                missing = f"annotation {ann_id}" if ann is None else f"image {image_id}"
                raise DatasetError(
                    f"ref {ref_id} in {refs_path} points at {missing}, which is not in "
                    "instances.json: the refs file and instances.json do not belong together"
                )
            source = CocoSegmentationMask(
                ann["segmentation"], image["height"], image["width"], ann_id
            )
            image_path = self.image_dir / _image_file_name(image)
            for sent in sentences:
                text = sent.get("sent", sent.get("raw", "")) if isinstance(sent, dict) else sent
                samples.append(
                    ReferSample(
                        image_path=image_path,
                        image_id=image_id,
                        ref_id=ref_id,
                        ann_id=ann_id,
                        sentence=str(text),
                        split=str(ref["split"]),
                        mask_source=source,
                    )
                )
        return samples


def _load_instances(
    path: Path,
) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """Read instances.json -> ({image_id: image}, {ann_id: ann})."""
    try:
        with path.open("rb") as f:
            inst = json.load(f)
        images = {int(im["id"]): im for im in inst["images"]}
        anns = {int(a["id"]): a for a in inst["annotations"]}
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read {path}: {e}") from e
    except (KeyError, TypeError) as e:
        raise DatasetError(
            f"{path} is not COCO instances: {e!r}; expected images [{{id, file_name, height, "
            "width}}] and annotations [{id, image_id, segmentation, ...}]"
        ) from e
    for im in images.values():
        if "height" not in im or "width" not in im:
            raise DatasetError(f"{path}: image {im['id']} has no height/width")
    return images, anns
