"""A synthetic referring-segmentation dataset, generated offline and deterministically.

Each scene (default 128 x 128 RGB PNG) holds 3-5 non-overlapping objects on a noisy, textured
background. Objects differ in shape (circle, square, triangle, cross), colour (red, green,
blue, yellow, purple, orange), size (small, big) and position, and are sampled so that
several share a shape or a colour: the image alone does not tell which one is meant. Each
scene gets 1-3 expressions, each for a different object, drawn from a small grammar
(attribute, position, size, relation: :mod:`.synthetic_grammar`), each kept only if it
denotes exactly its target, unambiguously to a human too. Masks are the exact visible pixels
of the target.

The output uses the ``refer`` layout, so :class:`~dit_deploy.data.refer.ReferDataset` reads it::

    <out>/synthetic/refs(unc).p, <out>/synthetic/instances.json, <out>/images/train2014/*.png

Every annotation also stores the object's ``attributes`` (shape, color, size, cx, cy, scale)
so that the expressions can be re-checked independently. Scene ``i`` of a split is generated
from ``(seed, split, i)`` alone: the val set does not change when ``--train`` does.

The scenes are drawn by :mod:`.synthetic_scenes`, the expressions by :mod:`.synthetic_grammar`;
this module writes the dataset (its names are importable from here too).

Usage::

    python -m dit_deploy.data.synthetic --out data/synthetic --train 20000 --val 1000 --seed 0
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..cli_types import OneLineParser
from ..errors import DatasetError
from ..progress import Progress
from .synthetic_grammar import (
    AREA_RATIO,
    KIND_WEIGHTS,
    POSITION_MARGIN,
    Expr,
    Head,
    choose_expression,
    expression_candidates,
    heads_of,
    referents,
)
from .synthetic_scenes import (
    COLORS,
    EXTENT,
    SCALE_RANGE,
    SHAPES,
    SIZES,
    SceneObject,
    render_scene,
    sample_scene,
    shape_mask,
)

__all__ = [
    "AREA_RATIO",
    "COLORS",
    "EXTENT",
    "KIND_WEIGHTS",
    "POSITION_MARGIN",
    "SCALE_RANGE",
    "SHAPES",
    "SIZES",
    "Expr",
    "Head",
    "SceneObject",
    "choose_expression",
    "expression_candidates",
    "generate",
    "heads_of",
    "main",
    "referents",
    "render_scene",
    "sample_scene",
    "shape_mask",
]

DATASET_NAME = "synthetic"
SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "testA": 2}


# --------------------------------------------------------------------------- writing


@dataclass
class _Scene:
    objects: list[SceneObject]
    image: np.ndarray
    masks: list[np.ndarray]
    expressions: list[tuple[int, Expr, str]] = field(default_factory=list)


def make_scene(seed: int, split: str, index: int, size: int) -> _Scene:
    """Scene ``index`` of ``split``: objects, image, visible masks and 1-3 expressions."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    while True:
        objects = sample_scene(rng, size)
        image, labels = render_scene(objects, size, rng)
        masks = [labels == i for i in range(len(objects))]
        areas = [int(m.sum()) for m in masks]
        scene = _Scene(objects, image, masks)
        want = int(rng.integers(1, 4))
        for target in rng.permutation(len(objects)):
            if len(scene.expressions) == want:
                break
            cands = expression_candidates(objects, areas, int(target), size)
            if cands:
                expr = choose_expression(cands, rng)
                scene.expressions.append((int(target), expr, expr.realise(rng)))
        if scene.expressions:
            return scene


def _encode_rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [
        int(xs.min()),
        int(ys.min()),
        int(xs.max() - xs.min() + 1),
        int(ys.max() - ys.min() + 1),
    ]


@dataclass
class GenerationSummary:
    """What :func:`build` wrote."""

    root: Path
    scenes: dict[str, int]
    expressions: dict[str, int]
    seconds: float


def build(
    out_dir: str | Path,
    n_train: int,
    n_val: int,
    seed: int = 0,
    size: int = 128,
    n_test: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> GenerationSummary:
    """Generate the dataset into ``out_dir`` (see the module docstring); return a summary."""
    if size < 64:
        raise DatasetError(f"size={size} is too small: scenes need at least 64 x 64 pixels")
    counts = {"train": n_train, "val": n_val, "testA": n_test}
    if any(n < 0 for n in counts.values()) or sum(counts.values()) == 0:
        raise DatasetError(f"scene counts must be >= 0 and not all zero, got {counts}")
    root = Path(out_dir).expanduser()
    data_dir, image_dir = root / DATASET_NAME, root / "images" / "train2014"
    if (data_dir / "instances.json").exists() and not overwrite:
        raise DatasetError(
            f"{data_dir} already holds a dataset; pass --overwrite (Python: overwrite=True) "
            "to replace it"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    tables = _Tables(image_dir, size, dict.fromkeys(counts, 0))
    t0 = time.perf_counter()
    with Progress("synthetic", sum(counts.values()), enabled=progress) as bar:
        for split, n in counts.items():
            for index in range(n):
                tables.add(make_scene(seed, split, index, size), split, index)
                bar.update(1)
    tables.write(data_dir, seed)
    return GenerationSummary(
        root,
        {k: v for k, v in counts.items() if v},
        {k: v for k, v in tables.n_expr.items() if counts[k]},
        time.perf_counter() - t0,
    )


@dataclass
class _Tables:
    """The COCO-style tables of the dataset being written, one scene at a time."""

    image_dir: Path
    size: int
    n_expr: dict[str, int]  # expressions per split
    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    refs: list[dict[str, Any]] = field(default_factory=list)

    def add(self, scene: _Scene, split: str, index: int) -> None:
        """Save the scene's image; add its image, annotation and ref rows."""
        from PIL import Image

        image_id = len(self.images) + 1
        file_name = f"{DATASET_NAME}_{split}_{index:07d}.png"
        Image.fromarray(scene.image).save(self.image_dir / file_name, compress_level=1)
        size = self.size
        self.images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
        ann_ids = [
            self._annotate(image_id, obj, m)
            for obj, m in zip(scene.objects, scene.masks, strict=True)
        ]
        for target, expr, sentence in scene.expressions:
            ref_id = len(self.refs) + 1
            self.refs.append(
                {
                    "ref_id": ref_id,
                    "ann_id": ann_ids[target],
                    "image_id": image_id,
                    "split": split,
                    "category_id": SHAPES.index(scene.objects[target].shape) + 1,
                    "file_name": file_name,
                    "expr_type": expr.kind,
                    "sentences": [
                        {
                            "sent": sentence,
                            "raw": sentence,
                            "tokens": sentence.split(),
                            "sent_id": ref_id,
                        }
                    ],
                }
            )
        self.n_expr[split] += len(scene.expressions)

    def _annotate(self, image_id: int, obj: SceneObject, mask: np.ndarray) -> int:
        """Add the annotation of one object (its visible mask); return its id."""
        ann_id = len(self.annotations) + 1
        self.annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": SHAPES.index(obj.shape) + 1,
                "segmentation": _encode_rle(mask),
                "area": int(mask.sum()),
                "bbox": _bbox(mask),
                "iscrowd": 0,
                "attributes": obj.attributes(),
            }
        )
        return ann_id

    def write(self, data_dir: Path, seed: int) -> None:
        """``instances.json`` and ``refs(unc).p`` into ``data_dir``."""
        instances = {
            "info": {
                "description": "dit_deploy synthetic referring segmentation",
                "seed": seed,
                "size": self.size,
            },
            "images": self.images,
            "annotations": self.annotations,
            "categories": [
                {"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)
            ],
        }
        with (data_dir / "instances.json").open("w", encoding="utf-8") as f:
            json.dump(instances, f, separators=(",", ":"))
        with (data_dir / "refs(unc).p").open("wb") as f:
            pickle.dump(self.refs, f, protocol=4)


def generate(
    out_dir: str | Path,
    n_train: int,
    n_val: int,
    seed: int = 0,
    size: int = 128,
    n_test: int = 0,
    overwrite: bool = False,
) -> Path:
    """Generate the dataset into ``out_dir`` and return ``out_dir`` (the ``ReferDataset`` root).

    Raises:
        DatasetError: bad counts/size, or ``out_dir`` already holds a dataset and not
            ``overwrite``.
    """
    return build(out_dir, n_train, n_val, seed, size, n_test, overwrite).root


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    p = OneLineParser(
        prog="python -m dit_deploy.data.synthetic",
        description="Generate the synthetic referring-segmentation dataset (refer layout: "
        "<out>/synthetic/refs(unc).p, <out>/synthetic/instances.json, "
        "<out>/images/train2014/*.png). Deterministic for a given seed.",
    )
    p.add_argument("--out", required=True, type=Path, help="output root directory")
    p.add_argument("--train", type=int, default=20000, help="train scenes (default 20000)")
    p.add_argument("--val", type=int, default=1000, help="val scenes (default 1000)")
    p.add_argument("--test", type=int, default=0, help="testA scenes (default 0: none)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = p.parse_args(argv)
    for name in ("train", "val", "test"):
        if getattr(args, name) < 0:
            p.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.size < 64:
        p.error(f"--size must be >= 64, got {args.size}")
    if args.train + args.val + args.test == 0:
        p.error("nothing to generate: --train, --val and --test are all 0")
    try:
        s = build(
            args.out,
            args.train,
            args.val,
            args.seed,
            args.size,
            args.test,
            args.overwrite,
            progress=not args.no_progress,
        )
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = sum(s.scenes.values())
    parts = ", ".join(
        f"{k} {s.scenes[k]} scenes / {s.expressions[k]} expressions" for k in s.scenes
    )
    print(
        f"synthetic: wrote {parts} to {s.root} in {s.seconds:.1f} s "
        f"({n / max(s.seconds, 1e-9):.0f} scenes/s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
