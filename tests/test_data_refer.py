"""RefCOCO-format and preprocessed-format readers, on tiny fixtures built in tmp_path."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dit_deploy.data import (
    PreprocessedReferDataset,
    ReferDataset,
    ReferDatasetBase,
    open_dataset,
)
from dit_deploy.errors import DatasetError, DITError

# Image 1 is 20 x 30 (H x W), image 2 is 16 x 16, image 3 is 12 x 10.
SIZES = {1: (20, 30), 2: (16, 16), 3: (12, 10)}


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE written by hand: alternating 0/1 run lengths, column-major."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = int(v), 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _block(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[rows, cols] = True
    return m


# Expected masks, one per annotation id.
EXPECTED = {
    # polygon rectangle x 2..12, y 3..9: pycocotools fills rows 3..8, cols 2..11 (60 pixels)
    101: _block(SIZES[1], slice(3, 9), slice(2, 12)),
    102: _block(SIZES[1], slice(10, 14), slice(20, 25)),  # compressed RLE
    103: _block(SIZES[2], slice(4, 8), slice(2, 4)),  # uncompressed RLE
    # two polygons: rows 1..3 x cols 1..3, and rows 8..11 x cols 5..8 (merged)
    104: _block(SIZES[3], slice(1, 4), slice(1, 4)) | _block(SIZES[3], slice(8, 12), slice(5, 9)),
}


def _sent(text: str, sid: int) -> dict[str, Any]:
    return {"sent": text, "raw": text.capitalize(), "tokens": text.split(), "sent_id": sid}


def make_refer_fixture(root: Path, dataset: str = "refcoco", split_by: str = "unc") -> Path:
    """Write a RefCOCO-style dataset: 3 images, 4 annotations, refs over 4 splits."""
    from pycocotools import mask as mask_utils

    data_dir = root / dataset
    img_dir = root / "images" / "train2014"
    data_dir.mkdir(parents=True)
    img_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for iid, (h, w) in SIZES.items():
        name = f"COCO_train2014_{iid:012d}." + ("png" if iid == 3 else "jpg")
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(img_dir / name)
        images.append({"id": iid, "file_name": name, "height": h, "width": w})
    rle = mask_utils.encode(np.asfortranarray(EXPECTED[102].astype(np.uint8)))
    anns = [
        {
            "id": 101,
            "image_id": 1,
            "segmentation": [[2, 3, 12, 3, 12, 9, 2, 9]],
            "bbox": [2, 3, 10, 6],
            "category_id": 1,
            "iscrowd": 0,
        },
        {
            "id": 102,
            "image_id": 1,
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
            "bbox": [20, 10, 5, 4],
            "category_id": 2,
            "iscrowd": 1,
        },
        {
            "id": 103,
            "image_id": 2,
            "segmentation": _uncompressed_rle(EXPECTED[103]),
            "bbox": [2, 4, 2, 4],
            "category_id": 1,
            "iscrowd": 1,
        },
        {
            "id": 104,
            "image_id": 3,
            "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4], [5, 8, 9, 8, 9, 12, 5, 12]],
            "bbox": [1, 1, 8, 11],
            "category_id": 1,
            "iscrowd": 0,
        },
    ]
    cats = [
        {"id": 1, "name": "person", "supercategory": "person"},
        {"id": 2, "name": "dog", "supercategory": "animal"},
    ]
    (data_dir / "instances.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )

    def ref(ref_id: int, ann_id: int, image_id: int, split: str, sents: list[str]) -> dict:
        return {
            "ref_id": ref_id,
            "ann_id": ann_id,
            "image_id": image_id,
            "split": split,
            "category_id": 1,
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
            "sentences": [_sent(s, ref_id * 10 + k) for k, s in enumerate(sents)],
        }

    refs = [
        ref(1, 101, 1, "train", ["man on left", "guy in red"]),
        ref(2, 102, 1, "val", ["dog", "brown dog", "dog on right"]),
        ref(3, 103, 2, "testA", ["small person"]),
        ref(4, 104, 3, "testB", ["two parts", "split thing"]),
        ref(5, 101, 1, "train", ["the man again"]),
    ]
    with (data_dir / f"refs({split_by}).p").open("wb") as f:
        pickle.dump(refs, f, protocol=2)
    return root


@pytest.fixture()
def refer_root(tmp_path: Path) -> Path:
    return make_refer_fixture(tmp_path / "refer")


@pytest.mark.parametrize(
    ("split", "n"), [("train", 3), ("val", 3), ("testA", 1), ("testB", 2), ("train+val", 6)]
)
def test_one_sample_per_sentence(refer_root: Path, split: str, n: int) -> None:
    ds = ReferDataset(refer_root, "refcoco", split)
    assert isinstance(ds, ReferDatasetBase)
    assert len(ds) == n and len(list(ds)) == n
    assert ds.name == "refcoco" and ds.split == split
    assert {s.split for s in ds} <= set(split.split("+"))


def test_sample_fields_and_masks(refer_root: Path) -> None:
    by_ann: dict[int, list] = {}
    for split in ("train", "val", "testA", "testB"):
        for s in ReferDataset(refer_root, "refcoco", split):
            by_ann.setdefault(s.ann_id, []).append(s)
    assert sorted(by_ann) == [101, 102, 103, 104]
    for ann_id, samples in by_ann.items():
        for s in samples:
            m = s.mask()
            assert m.dtype == bool and m.shape == EXPECTED[ann_id].shape
            np.testing.assert_array_equal(m, EXPECTED[ann_id], err_msg=f"ann {ann_id}")
    assert int(by_ann[101][0].mask().sum()) == 60
    val = ReferDataset(refer_root, "refcoco", "val")
    s = val[0]
    assert (s.ref_id, s.ann_id, s.image_id, s.sentence) == (2, 102, 1, "dog")
    assert [x.sentence for x in val] == ["dog", "brown dog", "dog on right"]
    # image file name comes from instances.json, not from the ref's file_name
    assert s.image_path == refer_root / "images" / "train2014" / "COCO_train2014_000000000001.jpg"
    img = s.load_image()
    assert img.dtype == np.uint8 and img.shape == (20, 30, 3)
    assert val[-1].sentence == "dog on right"
    with pytest.raises(IndexError):
        val[3]


def test_sample_is_hashable_and_comparable(refer_root: Path) -> None:
    a = ReferDataset(refer_root, "refcoco", "val")[0]
    b = ReferDataset(refer_root, "refcoco", "val")[0]
    assert a == b and hash(a) == hash(b)
    assert "mask_source" not in repr(a)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        ReferDataset(tmp_path / "nope", "refcoco", "val")


def test_unknown_dataset_lists_present(refer_root: Path) -> None:
    with pytest.raises(DatasetError, match=r"unknown dataset 'refcocox'.*refcoco"):
        ReferDataset(refer_root, "refcocox", "val")


def test_missing_refs_file(refer_root: Path) -> None:
    (refer_root / "refcoco" / "refs(unc).p").unlink()
    with pytest.raises(DatasetError, match=r"not a refer layout: refs\(unc\)\.p is missing"):
        ReferDataset(refer_root, "refcoco", "val")


def test_missing_instances(refer_root: Path) -> None:
    (refer_root / "refcoco" / "instances.json").unlink()
    with pytest.raises(DatasetError, match=r"instances\.json is missing.*Expected"):
        ReferDataset(refer_root, "refcoco", "val")


def test_unknown_split_lists_available(refer_root: Path) -> None:
    with pytest.raises(DatasetError, match=r"'test'.*available splits: testA, testB, train, val"):
        ReferDataset(refer_root, "refcoco", "test")


def test_missing_image_at_load_time(refer_root: Path) -> None:
    (refer_root / "images" / "train2014" / "COCO_train2014_000000000002.jpg").unlink()
    ds = ReferDataset(refer_root, "refcoco", "testA")  # construction does not read images
    assert ds[0].mask().sum() == 8
    with pytest.raises(DatasetError, match=r"missing: .*COCO_train2014_000000000002\.jpg"):
        ds[0].load_image()


def test_refcocog_split_by(tmp_path: Path) -> None:
    root = make_refer_fixture(tmp_path / "g", dataset="refcocog", split_by="google")
    with pytest.raises(DatasetError, match=r"refs\(umd\)\.p is missing.*split_by='google'"):
        ReferDataset(root, "refcocog", "val")
    ds = ReferDataset(root, "refcocog", "val", split_by="google")
    assert len(ds) == 3 and ds.split_by == "google"


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_is_refused(refer_root: Path) -> None:
    path = refer_root / "refcoco" / "refs(unc).p"
    path.write_bytes(pickle.dumps([_Evil()]))
    with pytest.raises(DatasetError, match=r"refusing to load .*system is not allowed"):
        ReferDataset(refer_root, "refcoco", "val")


def test_a_truncated_pickle_is_called_truncated_not_dangerous(refer_root: Path) -> None:
    path = refer_root / "refcoco" / "refs(unc).p"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DatasetError, match="truncated or corrupt, re-download it") as info:
        ReferDataset(refer_root, "refcoco", "val")
    assert "running code" not in str(info.value)


def test_python2_style_pickle_loads(tmp_path: Path) -> None:
    # Protocol 2 with a set and bytes: the globals a py2/py3 protocol-2 pickle may use.
    root = make_refer_fixture(tmp_path / "p2")
    path = root / "refcoco" / "refs(unc).p"
    refs = pickle.loads(path.read_bytes())
    refs[0]["extra"] = {1, 2}
    refs[0]["blob"] = b"\x00\x01"
    path.write_bytes(pickle.dumps(refs, protocol=2))
    assert len(ReferDataset(root, "refcoco", "train")) == 3


def test_not_a_list_pickle(refer_root: Path) -> None:
    (refer_root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(DatasetError, match="list of ref dicts"):
        ReferDataset(refer_root, "refcoco", "val")


def test_dataset_error_is_dit_error() -> None:
    assert issubclass(DatasetError, DITError)


# --------------------------------------------------------------------------- open_dataset


def test_open_dataset_refer(refer_root: Path) -> None:
    ds = open_dataset(refer_root, "val")
    assert isinstance(ds, ReferDataset) and len(ds) == 3
    assert len(open_dataset(refer_root / "refcoco", "testB")) == 2
    assert len(open_dataset(refer_root, "testA", dataset="refcoco")) == 1


def test_open_dataset_several_needs_name(refer_root: Path) -> None:
    make_refer_fixture(refer_root / "other", dataset="refcoco+")
    (refer_root / "refcoco+").symlink_to(refer_root / "other" / "refcoco+")
    with pytest.raises(DatasetError, match=r"several refer-layout datasets.*dataset="):
        open_dataset(refer_root, "val")
    assert open_dataset(refer_root, "val", dataset="refcoco+").name == "refcoco+"


def test_open_dataset_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty is not a dataset: expected a refer layout"):
        open_dataset(tmp_path / "empty", "val")
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "missing", "val")


# --------------------------------------------------------------------------- preprocessed


def make_preprocessed_fixture(root: Path) -> Path:
    """The authors' layout: train entries carry all sentences, others one sentence each."""
    (root / "anns").mkdir(parents=True)
    (root / "masks" / "refcoco").mkdir(parents=True)
    (root / "images" / "train2014").mkdir(parents=True)
    for iid, (h, w) in SIZES.items():
        Image.new("RGB", (w, h), (10, 20, 30)).save(
            root / "images" / "train2014" / f"COCO_train2014_{iid:012d}.jpg"
        )
    np.save(root / "masks" / "refcoco" / "1.npy", EXPECTED[101].astype(np.uint8))
    np.save(root / "masks" / "refcoco" / "2.npy", EXPECTED[102][..., None].astype(np.uint8))
    np.save(root / "masks" / "refcoco" / "3.npy", EXPECTED[103])
    ann = {
        "train": [{"iid": 1, "bbox": [2, 3, 10, 6], "cat_id": 0, "refs": ["a", "b"], "mask_id": 1}],
        "val": [
            {"iid": 1, "bbox": [20, 10, 5, 4], "cat_id": 0, "refs": [s], "mask_id": 2}
            for s in ("dog", "brown dog", "dog on right")
        ],
        "testA": [{"iid": 2, "bbox": [2, 4, 2, 4], "cat_id": 0, "refs": ["x"], "mask_id": 3}],
    }
    (root / "anns" / "refcoco.json").write_text(json.dumps(ann))
    return root


def test_preprocessed_reader(tmp_path: Path) -> None:
    root = make_preprocessed_fixture(tmp_path / "pre")
    ds = PreprocessedReferDataset(
        root / "anns" / "refcoco.json",
        root / "images" / "train2014",
        root / "masks" / "refcoco",
        "train",
    )
    assert len(ds) == 2 and ds.name == "refcoco"
    assert [s.sentence for s in ds] == ["a", "b"]
    s = ds[0]
    assert (s.image_id, s.ref_id, s.ann_id) == (1, 1, -1)
    np.testing.assert_array_equal(s.mask(), EXPECTED[101])
    assert s.load_image().shape == (20, 30, 3)
    val = open_dataset(root, "val")
    assert isinstance(val, PreprocessedReferDataset) and len(val) == 3
    np.testing.assert_array_equal(val[0].mask(), EXPECTED[102])  # (H, W, 1) squeezed
    np.testing.assert_array_equal(
        open_dataset(root / "anns" / "refcoco.json", "testA")[0].mask(), EXPECTED[103]
    )
    with pytest.raises(DatasetError, match=r"available splits: testA, train, val"):
        open_dataset(root, "testB")
    (root / "masks" / "refcoco" / "3.npy").unlink()
    with pytest.raises(DatasetError, match=r"mask file is missing: .*3\.npy"):
        open_dataset(root, "testA")[0].mask()
