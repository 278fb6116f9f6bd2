"""Masks on the wire and on disk: COCO compressed RLE and PNG (numpy + Pillow, no pycocotools).

The RLE is COCO's: run lengths over the mask in column-major order, starting with a run of
zeros (possibly empty), written as COCO's compact ASCII string (5-bit groups, each count after
the second stored as the difference to the count two before). ``pycocotools.mask.decode``
reads what :func:`encode_rle` writes, and :func:`decode_rle` reads what pycocotools writes;
the server's ``MASK_RLE`` output and the batch job's ``mask`` column both use it.
"""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from .errors import InputError


def _as_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"a mask must be 2-D (H, W); got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def rle_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of a (H, W) mask in column-major order, the first run being zeros."""
    flat = _as_mask(mask).ravel(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    return [0, *counts] if flat[0] else counts


def _counts_to_string(counts: list[int]) -> str:
    out: list[str] = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, as COCO's C code on a signed long
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def _string_to_counts(text: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p >= len(text):
                raise InputError("RLE counts string ends in the middle of a number")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise InputError(f"RLE counts string has an invalid character {text[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE ``{"size": [H, W], "counts": str}`` of a (H, W) bool mask."""
    mask = _as_mask(mask)
    return {
        "size": [int(mask.shape[0]), int(mask.shape[1])],
        "counts": _counts_to_string(rle_counts(mask)),
    }


def decode_rle(rle: dict | str | bytes) -> np.ndarray:
    """(H, W) bool mask from COCO compressed RLE (a dict, or its JSON text/bytes)."""
    if isinstance(rle, (str, bytes)):
        try:
            rle = json.loads(rle)
        except ValueError as exc:
            raise InputError(f"RLE is not valid JSON: {exc}") from None
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise InputError('RLE must be an object {"size": [H, W], "counts": str}')
    size, counts = rle["size"], rle["counts"]
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(v, int) and v >= 0 for v in size)
    ):
        raise InputError(f"RLE size must be [H, W] of non-negative integers; got {size!r}")
    h, w = size
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = _string_to_counts(counts) if isinstance(counts, str) else list(counts)
    if any(r < 0 for r in runs) or sum(runs) != h * w:
        raise InputError(f"RLE counts cover {sum(runs)} pixels, the size needs {h * w}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape((h, w), order="F")


def rle_json(mask: np.ndarray) -> str:
    """:func:`encode_rle` as compact JSON text."""
    return json.dumps(encode_rle(mask), separators=(",", ":"))


def encode_png(mask: np.ndarray) -> bytes:
    """A (H, W) bool mask as an 8-bit grayscale PNG (0 background, 255 foreground)."""
    buf = io.BytesIO()
    # zlib level 1: a two-valued mask compresses well anyway, and a server encodes one per
    # request (0.48 ms instead of 0.66 for a 300 x 451 mask)
    image = Image.fromarray(_as_mask(mask).astype(np.uint8) * 255, mode="L")
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """(H, W) bool mask from PNG bytes (foreground where the gray value is >= 128)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("L")) >= 128
    except (OSError, ValueError) as exc:
        raise InputError(f"mask PNG cannot be decoded: {exc}") from None
