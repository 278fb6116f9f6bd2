"""COCO RLE and PNG mask encoding: round trips and byte equality with pycocotools."""

import json

import numpy as np
import pytest

from dit_deploy.errors import InputError
from dit_deploy.mask_codec import (
    decode_png,
    decode_rle,
    encode_png,
    encode_rle,
    rle_counts,
    rle_json,
)

mask_api = pytest.importorskip("pycocotools.mask", reason="pycocotools is in the train extra")


def _masks():
    rng = np.random.default_rng(0)
    yield np.zeros((5, 7), bool)
    yield np.ones((5, 7), bool)
    yield rng.random((33, 17)) > 0.5
    big = np.zeros((300, 411), bool)
    big[40:260, 100:380] = True  # long runs: counts past 2**10 exercise the multi-group encoding
    big[100:120, 10:20] = True
    yield big
    yield rng.random((1, 1)) > 0.5


@pytest.mark.parametrize("index", range(5))
def test_rle_matches_pycocotools_byte_for_byte(index):
    mask = list(_masks())[index]
    ours = encode_rle(mask)
    theirs = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert ours["size"] == list(theirs["size"])
    assert ours["counts"] == theirs["counts"].decode("ascii")
    assert np.array_equal(mask_api.decode({**ours, "counts": ours["counts"].encode()}), mask)
    assert np.array_equal(decode_rle(theirs | {"counts": theirs["counts"].decode()}), mask)
    assert np.array_equal(decode_rle(rle_json(mask)), mask)


def test_counts_start_with_background_run():
    mask = np.array([[1, 0], [1, 1]], bool)  # column-major: 1 1 0 1
    assert rle_counts(mask) == [0, 2, 1, 1]
    assert sum(rle_counts(mask)) == mask.size


def test_rle_matches_pycocotools_on_many_masks():
    """Random shapes, densities and run lengths (long runs: negative differences, several
    5-bit groups), in both memory orders."""
    rng = np.random.default_rng(1)
    for k in range(60):
        h, w = (int(v) for v in rng.integers(1, 200, 2))
        if k % 3 == 0:
            mask = rng.random((h, w)) < rng.random()
        else:  # runs of random lengths along the column-major order
            flips = rng.random(h * w) < 10.0 ** rng.uniform(-4, -1)
            mask = (np.cumsum(flips) % 2 == 1).reshape((h, w), order="F")
        if k % 2:
            mask = np.asfortranarray(mask)
        theirs = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert encode_rle(mask)["counts"] == theirs["counts"].decode("ascii"), k


def test_png_round_trip_is_one_bit_grayscale():
    import io

    from PIL import Image

    mask = np.zeros((9, 13), bool)
    mask[2:5, 3:11] = True
    for m in (mask, np.asfortranarray(mask), mask.astype(np.uint8)):
        png = encode_png(m)
        assert np.array_equal(decode_png(png), mask)
        with Image.open(io.BytesIO(png)) as img:
            assert img.format == "PNG" and img.mode == "1" and img.size == (13, 9)
            assert set(np.unique(np.asarray(img.convert("L")))) == {0, 255}


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        json.dumps([1, 2]),
        json.dumps({"size": [2, 2], "counts": "1"}),  # covers 1 pixel of 4
        json.dumps({"size": [-1, 2], "counts": ""}),
        json.dumps({"size": [2, 2], "counts": "\x7f"}),
    ],
)
def test_bad_rle_is_a_typed_error(bad):
    with pytest.raises(InputError):
        decode_rle(bad)


def test_bad_png_and_bad_shape_are_typed_errors():
    with pytest.raises(InputError):
        decode_png(b"not a png")
    with pytest.raises(InputError):
        encode_rle(np.zeros((2, 2, 2), bool))
