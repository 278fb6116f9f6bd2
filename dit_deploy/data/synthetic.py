"""A synthetic referring-segmentation dataset, generated offline and deterministically.

Each scene (default 128 x 128 RGB PNG) holds 3-5 non-overlapping objects on a noisy, textured
background. Objects differ in shape (circle, square, triangle, cross), colour (red, green,
blue, yellow, purple, orange), size (small, big) and position, and are sampled so that
several share a shape or a colour: the image alone does not tell which one is meant. Each
scene gets 1-3 expressions, each for a different object, drawn from a small grammar::

    attribute   the [small|big] [<colour>] <shape>|one     "the small blue square"
    position    the leftmost <head> / the <head> at the bottom    "the green one at the bottom"
    size        the biggest|largest|smallest <head>        "the biggest triangle"
    relation    the <head> (to the) left of|right of|above|below the <head>
                "the yellow square left of the red circle"

An expression is emitted only if it denotes exactly its target in its scene, with margins
(positions at least ``POSITION_MARGIN`` x size apart, areas at least ``AREA_RATIO`` apart) so
that it is unambiguous to a human too. Masks are the exact visible pixels of the target.

The output uses the ``refer`` layout, so :class:`~dit_deploy.data.refer.ReferDataset` reads it::

    <out>/synthetic/refs(unc).p, <out>/synthetic/instances.json, <out>/images/train2014/*.png

Every annotation also stores the object's ``attributes`` (shape, color, size, cx, cy, scale)
so that the expressions can be re-checked independently. Scene ``i`` of a split is generated
from ``(seed, split, i)`` alone: the val set does not change when ``--train`` does.

Usage::

    python -m dit_deploy.data.synthetic --out data/synthetic --train 20000 --val 1000 --seed 0
"""

from __future__ import annotations

import json
import math
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

__all__ = [
    "AREA_RATIO",
    "COLORS",
    "POSITION_MARGIN",
    "SHAPES",
    "Expr",
    "Head",
    "SceneObject",
    "choose_expression",
    "expression_candidates",
    "generate",
    "main",
    "referents",
    "render_scene",
    "sample_scene",
]

DATASET_NAME = "synthetic"
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (40, 80, 225),
    "yellow": (240, 215, 35),
    "purple": (140, 55, 190),
    "orange": (245, 135, 20),
}
SIZES: tuple[str, ...] = ("small", "big")
#: Object scale (a fraction of the image side) per size class.
SCALE_RANGE: dict[str, tuple[float, float]] = {"small": (0.055, 0.075), "big": (0.11, 0.14)}
#: Radius of the circle enclosing each shape, in units of its scale.
EXTENT: dict[str, float] = {
    "circle": 1.0,
    "square": 0.85 * math.sqrt(2.0),
    "triangle": 1.35,
    "cross": math.hypot(1.05, 0.35),
}
#: Spatial words need the target to beat every competitor by this fraction of the image side.
POSITION_MARGIN = 0.08
#: "biggest"/"smallest" need this area ratio between the target and every competitor.
AREA_RATIO = 1.5
SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "testA": 2}
#: Relative frequency of each expression kind (among the kinds that can describe the target).
KIND_WEIGHTS: dict[str, float] = {
    "attribute": 0.35,
    "position": 0.25,
    "size": 0.15,
    "relation": 0.25,
}

_POSITION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "left": ("the leftmost {h}", "the {h} on the left"),
    "right": ("the rightmost {h}", "the {h} on the right"),
    "top": ("the topmost {h}", "the {h} at the top"),
    "bottom": ("the lowest {h}", "the {h} at the bottom"),
}
_SIZE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "biggest": ("the biggest {h}", "the largest {h}"),
    "smallest": ("the smallest {h}",),
}
_RELATION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "left": ("the {h} left of the {a}", "the {h} to the left of the {a}"),
    "right": ("the {h} right of the {a}", "the {h} to the right of the {a}"),
    "above": ("the {h} above the {a}",),
    "below": ("the {h} below the {a}",),
}


# --------------------------------------------------------------------------- scene


@dataclass(frozen=True)
class SceneObject:
    """One object: attributes, centre (cx, cy) in pixels and scale in pixels."""

    shape: str
    color: str
    size: str
    cx: float
    cy: float
    scale: float

    @property
    def radius(self) -> float:
        """Radius of the enclosing circle, in pixels."""
        return EXTENT[self.shape] * self.scale

    def attributes(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "color": self.color,
            "size": self.size,
            "cx": self.cx,
            "cy": self.cy,
            "scale": self.scale,
        }


def _pick(rng: np.random.Generator, items: Sequence[str]) -> str:
    return items[int(rng.integers(len(items)))]


def sample_scene(rng: np.random.Generator, size: int) -> list[SceneObject]:
    """Sample 3-5 non-overlapping objects, several sharing a shape or a colour."""
    colors = tuple(COLORS)
    while True:
        n = int(rng.integers(3, 6))
        objects: list[SceneObject] = []
        for _ in range(n):
            for _attempt in range(60):
                # Reuse an attribute of an earlier object half of the time, so that one word
                # rarely identifies the target.
                used_shapes = [o.shape for o in objects]
                used_colors = [o.color for o in objects]
                shape = (
                    _pick(rng, used_shapes)
                    if used_shapes and rng.random() < 0.5
                    else _pick(rng, SHAPES)
                )
                color = (
                    _pick(rng, used_colors)
                    if used_colors and rng.random() < 0.4
                    else _pick(rng, colors)
                )
                size_class = _pick(rng, SIZES)
                scale = float(rng.uniform(*SCALE_RANGE[size_class])) * size
                r = EXTENT[shape] * scale
                cx = round(float(rng.uniform(r + 1, size - r - 1)), 2)
                cy = round(float(rng.uniform(r + 1, size - r - 1)), 2)
                if all(math.hypot(cx - o.cx, cy - o.cy) >= r + o.radius + 2 for o in objects):
                    objects.append(SceneObject(shape, color, size_class, cx, cy, round(scale, 3)))
                    break
        if len(objects) >= 3:
            return objects


def shape_mask(obj: SceneObject, size: int) -> np.ndarray:
    """bool (size, size) mask of ``obj``, sampled at pixel centres."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = xs - obj.cx, ys - obj.cy
    s = obj.scale
    if obj.shape == "circle":
        return dx * dx + dy * dy <= s * s
    if obj.shape == "square":
        h = 0.85 * s
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if obj.shape == "cross":
        arm, half = 1.05 * s, 0.35 * s
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= half)) | (
            (np.abs(dx) <= half) & (np.abs(dy) <= arm)
        )
    if obj.shape == "triangle":  # upright, centroid at (cx, cy), circumradius EXTENT * scale
        big_r = EXTENT["triangle"] * s
        # Inside = below the two upper edges and above the base.
        k = math.sqrt(3.0)
        return (dy <= big_r / 2) & (dy >= k * dx - big_r) & (dy >= -k * dx - big_r)
    raise ValueError(f"unknown shape {obj.shape!r}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 (size, size, 3): greyish base, smooth low-frequency texture, fine noise."""
    from PIL import Image

    base = rng.uniform(70, 185) + rng.uniform(-12, 12, size=3)
    coarse = rng.normal(0.0, 1.0, size=(6, 6)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))
    texture = smooth[..., None] * rng.uniform(10, 25)
    return (base[None, None, :] + texture).astype(np.float32)


def render_scene(
    objects: Sequence[SceneObject], size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the scene, later objects on top of earlier ones.

    Returns:
        image: uint8 (size, size, 3) RGB.
        labels: int16 (size, size), index of the visible object per pixel, -1 for background.
    """
    img = _background(rng, size)
    labels = np.full((size, size), -1, dtype=np.int16)
    for i, obj in enumerate(objects):
        m = shape_mask(obj, size)
        colour = np.asarray(COLORS[obj.color], np.float32) + rng.uniform(-12, 12, size=3)
        # A gentle vertical shading so objects are not flat patches.
        shade = (np.linspace(8, -8, size, dtype=np.float32)[:, None] * rng.uniform(0.0, 1.0))[
            ..., None
        ]
        img = np.where(m[..., None], colour[None, None, :] + shade, img)
        labels[m] = i
    # Sensor-like noise, shared by the three channels (smaller PNGs than per-channel noise).
    img += rng.normal(0.0, 4.0, size=(size, size, 1)).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), labels


# --------------------------------------------------------------------------- grammar


@dataclass(frozen=True)
class Head:
    """A noun phrase over object attributes: ``[size] [colour] (shape | "one")``."""

    size: str | None = None
    color: str | None = None
    shape: str | None = None

    def text(self) -> str:
        return " ".join(w for w in (self.size, self.color, self.shape or "one") if w)

    def matches(self, obj: SceneObject) -> bool:
        return (
            (self.size is None or obj.size == self.size)
            and (self.color is None or obj.color == self.color)
            and (self.shape is None or obj.shape == self.shape)
        )


def heads_of(obj: SceneObject, with_size: bool = True) -> list[Head]:
    """Every non-empty combination of ``obj``'s attributes, shortest first."""
    out = []
    for use_size in (False, True) if with_size else (False,):
        for use_color in (False, True):
            for use_shape in (True, False):
                if use_size or use_color or use_shape:
                    out.append(
                        Head(
                            obj.size if use_size else None,
                            obj.color if use_color else None,
                            obj.shape if use_shape else None,
                        )
                    )
    return sorted(
        out, key=lambda h: (h.size is not None) + (h.color is not None) + (h.shape is not None)
    )


@dataclass(frozen=True)
class Expr:
    """A structured expression; :func:`referents` gives what it denotes in a scene.

    Attributes:
        kind: ``attribute``, ``position``, ``size`` or ``relation``.
        head: the noun phrase naming the target's kind.
        direction: position ``left/right/top/bottom``, size ``biggest/smallest``, relation
            ``left/right/above/below``.
        anchor_head: relation only: the phrase naming the reference object.
    """

    kind: str
    head: Head
    direction: str | None = None
    anchor_head: Head | None = None

    def realise(self, rng: np.random.Generator) -> str:
        """Pick a surface form: the sentence."""
        if self.kind == "attribute":
            return f"the {self.head.text()}"
        table = {
            "position": _POSITION_TEMPLATES,
            "size": _SIZE_TEMPLATES,
            "relation": _RELATION_TEMPLATES,
        }[self.kind]
        assert self.direction is not None
        template = _pick(rng, table[self.direction])
        anchor = self.anchor_head.text() if self.anchor_head else ""
        return template.format(h=self.head.text(), a=anchor)


_AXIS = {
    "left": (0, -1.0),
    "right": (0, 1.0),
    "top": (1, -1.0),
    "bottom": (1, 1.0),
    "above": (1, -1.0),
    "below": (1, 1.0),
}


def _coord(obj: SceneObject, direction: str) -> float:
    """Signed coordinate that grows in ``direction``."""
    axis, sign = _AXIS[direction]
    return sign * (obj.cx if axis == 0 else obj.cy)


def referents(
    expr: Expr, objects: Sequence[SceneObject], areas: Sequence[int], size: int
) -> list[int] | None:
    """Indices of the objects ``expr`` denotes, or None when it is ambiguous.

    Strict semantics with margins: a spatial word needs a gap of at least
    ``POSITION_MARGIN * size`` pixels to every competitor, "biggest"/"smallest" an area ratio
    of ``AREA_RATIO``; superlatives and relations need a head that matches 2+ objects (one
    match would make the extra words meaningless).
    """
    margin = POSITION_MARGIN * size
    cands = [i for i, o in enumerate(objects) if expr.head.matches(o)]
    if expr.kind == "attribute":
        return cands
    if len(cands) < 2:
        return None
    assert expr.direction is not None
    if expr.kind == "position":
        ranked = sorted(cands, key=lambda i: _coord(objects[i], expr.direction), reverse=True)
        gap = _coord(objects[ranked[0]], expr.direction) - _coord(
            objects[ranked[1]], expr.direction
        )
        return [ranked[0]] if gap >= margin else None
    if expr.kind == "size":
        sign = 1.0 if expr.direction == "biggest" else -1.0
        ranked = sorted(cands, key=lambda i: sign * areas[i], reverse=True)
        a0, a1 = areas[ranked[0]], areas[ranked[1]]
        ok = a0 >= AREA_RATIO * a1 if sign > 0 else a0 * AREA_RATIO <= a1
        return [ranked[0]] if ok else None
    if expr.kind == "relation":
        assert expr.anchor_head is not None
        anchors = [i for i, o in enumerate(objects) if expr.anchor_head.matches(o)]
        if len(anchors) != 1:
            return None
        a = anchors[0]
        offsets = {
            i: _coord(objects[i], expr.direction) - _coord(objects[a], expr.direction)
            for i in cands
            if i != a
        }
        if any(-margin < d < margin for d in offsets.values()):
            return None
        return [i for i, d in offsets.items() if d >= margin]
    raise ValueError(f"unknown expression kind {expr.kind!r}")


def _anchor_head(objects: Sequence[SceneObject], a: int) -> Head | None:
    """The most natural phrase that names object ``a`` alone (colour + shape preferred)."""
    o = objects[a]
    prefs = [
        Head(None, o.color, o.shape),
        Head(None, None, o.shape),
        Head(o.size, None, o.shape),
        Head(None, o.color, None),
        Head(o.size, o.color, o.shape),
    ]
    for h in prefs:
        if sum(h.matches(x) for x in objects) == 1:
            return h
    return None


def expression_candidates(
    objects: Sequence[SceneObject], areas: Sequence[int], target: int, size: int
) -> list[Expr]:
    """Every expression of the grammar that denotes exactly ``target`` in this scene."""
    t = objects[target]
    out: list[Expr] = []
    structural: list[Expr] = [Expr("attribute", h) for h in heads_of(t)]
    for h in heads_of(t):
        structural += [Expr("position", h, d) for d in _POSITION_TEMPLATES]
    for h in heads_of(t, with_size=False):
        structural += [Expr("size", h, d) for d in _SIZE_TEMPLATES]
    for a in range(len(objects)):
        ah = _anchor_head(objects, a) if a != target else None
        if ah is not None:
            for h in heads_of(t):
                structural += [Expr("relation", h, d, ah) for d in _RELATION_TEMPLATES]
    for e in structural:
        if referents(e, objects, areas, size) == [target]:
            out.append(e)
    return out


def choose_expression(candidates: Sequence[Expr], rng: np.random.Generator) -> Expr:
    """Pick a kind (weighted by ``KIND_WEIGHTS`` among those present), then a candidate."""
    kinds = sorted({e.kind for e in candidates}, key=list(KIND_WEIGHTS).index)
    w = np.array([KIND_WEIGHTS[k] for k in kinds])
    kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
    pool = [e for e in candidates if e.kind == kind]
    return pool[int(rng.integers(len(pool)))]


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
    from PIL import Image
    from tqdm import tqdm

    if size < 64:
        raise DatasetError(f"size={size} is too small: scenes need at least 64 x 64 pixels")
    counts = {"train": n_train, "val": n_val, "testA": n_test}
    if any(n < 0 for n in counts.values()) or sum(counts.values()) == 0:
        raise DatasetError(f"scene counts must be >= 0 and not all zero, got {counts}")
    root = Path(out_dir).expanduser()
    data_dir, image_dir = root / DATASET_NAME, root / "images" / "train2014"
    if (data_dir / "instances.json").exists() and not overwrite:
        raise DatasetError(
            f"{data_dir} already holds a dataset; pass overwrite=True (--overwrite) to replace it"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    refs: list[dict[str, Any]] = []
    n_expr = dict.fromkeys(counts, 0)
    t0 = time.perf_counter()
    bar = tqdm(total=sum(counts.values()), unit="scene", desc="synthetic", disable=not progress)
    for split, n in counts.items():
        for index in range(n):
            scene = make_scene(seed, split, index, size)
            image_id = len(images) + 1
            file_name = f"{DATASET_NAME}_{split}_{index:07d}.png"
            Image.fromarray(scene.image).save(image_dir / file_name, compress_level=1)
            images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
            ann_ids = []
            for obj, m in zip(scene.objects, scene.masks, strict=True):
                ann_ids.append(len(annotations) + 1)
                annotations.append(
                    {
                        "id": ann_ids[-1],
                        "image_id": image_id,
                        "category_id": SHAPES.index(obj.shape) + 1,
                        "segmentation": _encode_rle(m),
                        "area": int(m.sum()),
                        "bbox": _bbox(m),
                        "iscrowd": 0,
                        "attributes": obj.attributes(),
                    }
                )
            for target, expr, sentence in scene.expressions:
                ref_id = len(refs) + 1
                refs.append(
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
            n_expr[split] += len(scene.expressions)
            bar.update(1)
    bar.close()

    instances = {
        "info": {
            "description": "dit_deploy synthetic referring segmentation",
            "seed": seed,
            "size": size,
        },
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)
        ],
    }
    with (data_dir / "instances.json").open("w", encoding="utf-8") as f:
        json.dump(instances, f, separators=(",", ":"))
    with (data_dir / "refs(unc).p").open("wb") as f:
        pickle.dump(refs, f, protocol=4)
    return GenerationSummary(
        root,
        {k: v for k, v in counts.items() if v},
        {k: v for k, v in n_expr.items() if counts[k]},
        time.perf_counter() - t0,
    )


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
