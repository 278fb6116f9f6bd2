"""Synthetic referring dataset: determinism, unambiguous expressions, exact masks, CLI."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dit_deploy.data import ReferDataset, open_dataset
from dit_deploy.data.refer import decode_coco_segmentation
from dit_deploy.data.synthetic import (
    COLORS,
    EXTENT,
    SceneObject,
    generate,
    render_scene,
    shape_mask,
)
from dit_deploy.errors import DatasetError

SIZE = 96


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(
        tmp_path_factory.mktemp("syn") / "a", n_train=40, n_val=20, seed=0, size=SIZE, n_test=5
    )


def _load(root: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    inst = json.loads((root / "synthetic" / "instances.json").read_text())
    refs = pickle.loads((root / "synthetic" / "refs(unc).p").read_bytes())
    return inst, refs


def _images(root: Path) -> dict[str, np.ndarray]:
    return {
        p.name: np.asarray(Image.open(p))
        for p in sorted((root / "images" / "train2014").glob("*.png"))
    }


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes(dataset_root: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "b", n_train=40, n_val=20, seed=0, size=SIZE, n_test=5)
    for name in ("instances.json", "refs(unc).p"):
        assert (again / "synthetic" / name).read_bytes() == (
            dataset_root / "synthetic" / name
        ).read_bytes()
    a, b = _images(dataset_root), _images(again)
    assert a.keys() == b.keys() and len(a) == 65
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_different_seed_differs(dataset_root: Path, tmp_path: Path) -> None:
    other = generate(tmp_path / "c", n_train=40, n_val=20, seed=1, size=SIZE, n_test=5)
    assert (other / "synthetic" / "instances.json").read_bytes() != (
        dataset_root / "synthetic" / "instances.json"
    ).read_bytes()
    a, b = _images(dataset_root), _images(other)
    assert sum(not np.array_equal(a[k], b[k]) for k in a) == len(a)


def test_val_does_not_depend_on_train_size(dataset_root: Path, tmp_path: Path) -> None:
    other = generate(tmp_path / "d", n_train=3, n_val=20, seed=0, size=SIZE)
    a, b = _images(dataset_root), _images(other)
    for k in (k for k in b if "_val_" in k):
        np.testing.assert_array_equal(a[k], b[k])


def test_refuses_to_overwrite(dataset_root: Path) -> None:
    with pytest.raises(DatasetError, match="overwrite"):
        generate(dataset_root, n_train=1, n_val=1, seed=0, size=SIZE)


# --------------------------------------------------------------------------- expressions

_COLOR = "|".join(COLORS)
_HEAD = rf"(?:(small|big) )?(?:({_COLOR}) )?(circle|square|triangle|cross|one)"
_RELATION = re.compile(rf"^the {_HEAD} (?:to the )?(left of|right of|above|below) the {_HEAD}$")
_POS_PRE = re.compile(rf"^the (leftmost|rightmost|topmost|lowest) {_HEAD}$")
_POS_POST = re.compile(rf"^the {_HEAD} (?:on|at) the (left|right|top|bottom)$")
_SIZE = re.compile(rf"^the (biggest|largest|smallest) {_HEAD}$")
_ATTR = re.compile(rf"^the {_HEAD}$")


def _matches(objs: list[dict], size: str | None, color: str | None, shape: str) -> list[dict]:
    return [
        o
        for o in objs
        if (size is None or o["attributes"]["size"] == size)
        and (color is None or o["attributes"]["color"] == color)
        and (shape == "one" or o["attributes"]["shape"] == shape)
    ]


def _key(o: dict, direction: str) -> float:
    """A coordinate that grows in ``direction`` (image y grows downwards)."""
    a = o["attributes"]
    return {
        "left": -a["cx"],
        "right": a["cx"],
        "top": -a["cy"],
        "bottom": a["cy"],
        "above": -a["cy"],
        "below": a["cy"],
    }[direction]


def _denoted(sentence: str, objs: list[dict]) -> list[int]:
    """Independent reading of a sentence over the stored attributes: ids it denotes."""
    if m := _RELATION.match(sentence):
        s1, c1, sh1, rel, s2, c2, sh2 = m.groups()
        anchors = _matches(objs, s2, c2, sh2)
        assert len(anchors) == 1, f"anchor of {sentence!r} is not unique"
        a = anchors[0]
        direction = rel.split()[0]
        return [
            o["id"]
            for o in _matches(objs, s1, c1, sh1)
            if o is not a and _key(o, direction) > _key(a, direction)
        ]
    if (m := _POS_PRE.match(sentence)) or (m := _POS_POST.match(sentence)):
        g = m.groups()
        word, (s, c, sh) = (g[0], g[1:]) if m.re is _POS_PRE else (g[3], g[:3])
        direction = {
            "leftmost": "left",
            "rightmost": "right",
            "topmost": "top",
            "lowest": "bottom",
        }.get(word, word)
        cands = _matches(objs, s, c, sh)
        best = max(_key(o, direction) for o in cands)
        return [o["id"] for o in cands if _key(o, direction) == best]
    if m := _SIZE.match(sentence):
        word, s, c, sh = m.groups()
        cands = _matches(objs, s, c, sh)
        sign = -1 if word == "smallest" else 1
        best = max(sign * o["area"] for o in cands)
        return [o["id"] for o in cands if sign * o["area"] == best]
    if m := _ATTR.match(sentence):
        return [o["id"] for o in _matches(objs, *m.groups())]
    raise AssertionError(f"sentence outside the grammar: {sentence!r}")


def test_every_expression_denotes_only_its_target(dataset_root: Path) -> None:
    inst, refs = _load(dataset_root)
    by_image: dict[int, list[dict]] = defaultdict(list)
    for a in inst["annotations"]:
        by_image[a["image_id"]].append(a)
    kinds = set()
    for ref in refs:
        (sent,) = ref["sentences"]
        assert _denoted(sent["sent"], by_image[ref["image_id"]]) == [ref["ann_id"]], sent["sent"]
        kinds.add(ref["expr_type"])
    assert kinds == {"attribute", "position", "size", "relation"}


def test_scenes_need_the_text(dataset_root: Path) -> None:
    inst, refs = _load(dataset_root)
    by_image: dict[int, list[dict]] = defaultdict(list)
    for a in inst["annotations"]:
        by_image[a["image_id"]].append(a)
    assert all(3 <= len(v) <= 5 for v in by_image.values())
    targets: dict[int, list[int]] = defaultdict(list)
    for r in refs:
        targets[r["image_id"]].append(r["ann_id"])
    assert all(len(t) == len(set(t)) and 1 <= len(t) <= 3 for t in targets.values())
    assert sum(len(t) > 1 for t in targets.values()) >= len(targets) // 3
    # A text-blind rule ("the biggest object") is right far less than half of the time.
    biggest = sum(
        max(by_image[r["image_id"]], key=lambda a: a["area"])["id"] == r["ann_id"] for r in refs
    )
    assert biggest / len(refs) < 0.45
    # Objects share attributes: most scenes repeat a shape or a colour.
    shared = sum(
        len({a["attributes"][k] for a in v}) < len(v) for v in by_image.values() for k in ("shape",)
    )
    assert shared >= len(by_image) // 2


# --------------------------------------------------------------------------- masks


def test_masks_are_the_visible_object_pixels(dataset_root: Path) -> None:
    inst, _ = _load(dataset_root)
    images = {im["id"]: im for im in inst["images"]}
    by_image: dict[int, list[dict]] = defaultdict(list)
    for a in inst["annotations"]:
        by_image[a["image_id"]].append(a)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    for iid, anns in by_image.items():
        pixels = np.asarray(
            Image.open(dataset_root / "images" / "train2014" / images[iid]["file_name"])
        ).astype(float)
        union = np.zeros((SIZE, SIZE), dtype=int)
        for a in anns:
            m = decode_coco_segmentation(a["segmentation"], SIZE, SIZE)
            at = a["attributes"]
            assert m.sum() == a["area"] > 0
            union += m
            r = EXTENT[at["shape"]] * at["scale"]
            assert ((xs - at["cx"]) ** 2 + (ys - at["cy"]) ** 2 <= (r + 1) ** 2)[m].all()
            if at["shape"] == "circle":  # independent rasterisation
                disk = (xs - at["cx"]) ** 2 + (ys - at["cy"]) ** 2 <= at["scale"] ** 2
                np.testing.assert_array_equal(m, disk)
            mean = pixels[m].mean(axis=0)
            assert np.abs(mean - np.array(COLORS[at["color"]])).max() < 30, (iid, at)
        assert union.max() == 1  # disjoint visible masks


def test_occlusion_gives_visible_pixels_only() -> None:
    back = SceneObject("square", "red", "big", 40.0, 40.0, 15.0)
    front = SceneObject("circle", "blue", "big", 55.0, 40.0, 12.0)
    image, labels = render_scene([back, front], 96, np.random.default_rng(0))
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    full_back, full_front = shape_mask(back, 96), shape_mask(front, 96)
    assert (full_back & full_front).any()
    np.testing.assert_array_equal(labels == 0, full_back & ~full_front)
    np.testing.assert_array_equal(labels == 1, full_front)


def test_refer_reader_reads_it(dataset_root: Path) -> None:
    _, refs = _load(dataset_root)
    for split in ("train", "val", "testA"):
        ds = open_dataset(dataset_root, split)
        assert isinstance(ds, ReferDataset) and ds.name == "synthetic"
        assert len(ds) == sum(r["split"] == split for r in refs)
    s = open_dataset(dataset_root, "val")[0]
    assert s.load_image().shape == (SIZE, SIZE, 3)
    assert s.mask().shape == (SIZE, SIZE) and s.mask().any()


# --------------------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dit_deploy.data.synthetic", *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        timeout=120,
    )


def test_cli_help() -> None:
    r = _cli("--help")
    assert r.returncode == 0
    assert "--train" in r.stdout and "--seed" in r.stdout and "refer layout" in r.stdout


def test_cli_bad_arguments(tmp_path: Path) -> None:
    r = _cli("--out", str(tmp_path / "x"), "--train", "-3")
    assert r.returncode != 0 and "--train must be >= 0" in r.stderr
    r = _cli("--out", str(tmp_path / "x"), "--size", "big")
    assert r.returncode != 0 and "invalid int value" in r.stderr
    assert not (tmp_path / "x").exists()


def test_cli_generates(tmp_path: Path) -> None:
    r = _cli(
        "--out",
        str(tmp_path / "cli"),
        "--train",
        "3",
        "--val",
        "2",
        "--size",
        "64",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    assert re.search(r"synthetic: wrote train 3 scenes / \d+ expressions, val 2 scenes", r.stdout)
    assert len(open_dataset(tmp_path / "cli", "val")) >= 2
    r = _cli("--out", str(tmp_path / "cli"), "--train", "1", "--val", "1", "--no-progress")
    assert r.returncode == 1 and "--overwrite" in r.stderr
