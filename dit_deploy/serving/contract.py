"""The served model's contract (KServe v2) and the per-request work shared by every server.

Model ``dit``; a batch dimension first on every tensor (dynamic batching):

======== ======= ===== ==========================================================
tensor   type    dims  meaning
======== ======= ===== ==========================================================
IMAGE    BYTES   [1]   the encoded image file (JPEG, PNG, WebP, BMP, TIFF or GIF)
TEXT     BYTES   [1]   the referring expression, UTF-8
MASK_PNG BYTES   [1]   the mask at the ORIGINAL image size, 1-bit grayscale PNG (0 / 255)
MASK_RLE BYTES   [1]   the same mask as COCO compressed RLE, JSON (pycocotools reads it)
SCORE    FP32    [1]   :attr:`dit_deploy.postprocess.MaskResult.score`
======== ======= ===== ==========================================================

Per-request errors. A bad request (undecodable or oversized image, empty or non-UTF-8 text)
gets Triton's own error response, HTTP 400 / gRPC ``INVALID_ARGUMENT`` with the reason in the
message, counted in ``nv_inference_request_failure``, while the requests batched with it
succeed: every row is validated on its own before the good ones run together. Both
deployments (``dit-deploy serve`` and a ``triton-repo`` repository) answer the same way, so a
generic client (tritonclient, curl, perf_analyzer) needs to know nothing of this project. A
wrong tensor type or shape is refused by Triton itself, for that request only.

Cost bounds. One request, all its rows together, may not cost more than ``max_bytes`` of
encoded images (default :data:`MAX_IMAGE_BYTES`) and ``max_pixels`` decoded pixels (served
default :data:`SERVE_MAX_PIXELS`), both refused before anything is decoded (the pixel counts
come from the files' headers): :func:`request_budget_error`.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import ImageError, InputError, TextError
from ..mask_codec import encode_png, rle_json
from ..postprocess import MaskResult
from ..preprocess import DEFAULT_MAX_PIXELS, IMAGE_FORMATS, IMAGE_FORMATS_TEXT, load_image

MODEL_NAME = "dit"
IMAGE, TEXT = "IMAGE", "TEXT"
MASK_PNG, MASK_RLE, SCORE = "MASK_PNG", "MASK_RLE", "SCORE"
INPUTS = (IMAGE, TEXT)
OUTPUTS = (MASK_PNG, MASK_RLE, SCORE)
MAX_TEXT_BYTES = 4096
# a server's default per-request budget: 16.8 Mpx decode to 50 MB of RGB (the 100 Mpx of the
# in-process default would let one 88 KB PNG of 9500 x 9500 cost 1.3 GB and 10 s)
SERVE_MAX_PIXELS = 4096 * 4096
MAX_IMAGE_BYTES = 32 * 2**20


def _as_bytes(value: object, name: str, error: type[InputError]) -> bytes:
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise error(f"{name} must be BYTES; got a {type(value).__name__}")


def decode_image(
    data: object, max_pixels: int, input_size: int, max_bytes: int = MAX_IMAGE_BYTES
) -> np.ndarray:
    """uint8 RGB (H, W, 3) from an encoded image file, exactly as ``load_image(path)`` reads it.

    Raises:
        ImageError: empty, more than ``max_bytes``, not an image Pillow can read, truncated,
            or more than ``max_pixels`` pixels (checked from the header, before decoding).
    """
    raw = _as_bytes(data, IMAGE, ImageError)
    if not raw:
        raise ImageError("IMAGE is empty; send the bytes of an image file (JPEG, PNG, ...)")
    if len(raw) > max_bytes:
        raise ImageError(
            f"IMAGE has {len(raw)} bytes, more than this server's {max_bytes}; send a smaller "
            "file (the server's --max-image-bytes sets the limit)"
        )
    try:
        im = Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"IMAGE exceeds Pillow's decompression-bomb limit: {exc}") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ...
        reason = str(exc).split(" <_io.")[0]  # Pillow names the BytesIO object: noise here
        raise ImageError(
            f"IMAGE ({len(raw)} bytes) is not an image file Pillow can read ({reason}); "
            f"send {IMAGE_FORMATS_TEXT} bytes"
        ) from None
    with im:
        return load_image(im, max_pixels=max_pixels, input_size=input_size)


def _header_pixels(value: object) -> int:
    """Pixels an encoded image's header declares; 0 where it has none (its row fails alone)."""
    if not isinstance(value, (bytes, np.bytes_)):
        return 0
    try:
        with Image.open(io.BytesIO(bytes(value)), formats=IMAGE_FORMATS) as im:
            return im.width * im.height
    except Exception:  # noqa: BLE001 - undecodable rows are reported by decode_image
        return 0


def request_budget_error(images: Sequence[object], max_pixels: int, max_bytes: int) -> str:
    """Why a request's images together exceed the per-request budget ("" when they fit).

    A one-row request is left to :func:`decode_image`, whose message names its one image.
    Only headers are read: nothing is decoded.
    """
    if len(images) < 2:
        return ""
    total = sum(len(x) for x in images if isinstance(x, (bytes, np.bytes_, str)))
    if total > max_bytes:
        return (
            f"the request's {len(images)} images have {total} bytes together, more than this "
            f"server's per-request budget of {max_bytes} (--max-image-bytes); send fewer or "
            "smaller images per request"
        )
    pixels = sum(_header_pixels(x) for x in images)
    if pixels > max_pixels:
        return (
            f"the request's {len(images)} images have {pixels} pixels together, more than "
            f"this server's per-request max_pixels of {max_pixels} (--max-pixels); send fewer "
            "or smaller images per request"
        )
    return ""


def decode_text(data: object) -> str:
    """The expression as ``str``.

    Raises:
        TextError: not UTF-8, empty or blank, or longer than :data:`MAX_TEXT_BYTES`.
    """
    raw = _as_bytes(data, TEXT, TextError)
    if len(raw) > MAX_TEXT_BYTES:
        raise TextError(f"TEXT has {len(raw)} bytes, more than {MAX_TEXT_BYTES}; shorten it")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextError(f"TEXT is not UTF-8 ({exc}); encode the expression as UTF-8") from None
    if not text.strip():
        raise TextError("TEXT is empty; send a referring expression such as 'the left dog'")
    return text


@dataclass
class Row:
    """One (image, expression) pair after validation: inputs, or the reason it failed."""

    image: np.ndarray | None = None
    text: str | None = None
    error: str = ""


def validate_rows(
    images: Iterable[object],
    texts: Iterable[object],
    input_size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    check_text=None,
    max_bytes: int = MAX_IMAGE_BYTES,
) -> list[Row]:
    """Decode every row on its own, so that one bad row cannot fail the others.

    Args:
        images, texts: the flattened IMAGE and TEXT values, one per row.
        check_text: optional ``f(text)`` raising :class:`InputError` (e.g. the tokenizer).
    """
    rows = []
    for image, text in zip(images, texts, strict=True):
        try:
            t = decode_text(text)
            if check_text is not None:
                check_text(t)
            rows.append(Row(decode_image(image, max_pixels, input_size, max_bytes), t))
        except InputError as exc:
            rows.append(Row(error=str(exc)))
    return rows


def encode_outputs(result: MaskResult, want: Iterable[str]) -> dict:
    """One row's outputs: only the encodings in ``want`` are computed; the others stay empty."""
    want = set(want)
    return {
        MASK_PNG: encode_png(result.mask) if MASK_PNG in want else b"",
        MASK_RLE: rle_json(result.mask).encode("ascii") if MASK_RLE in want else b"",
        SCORE: np.float32(result.score),
    }


def stack_outputs(rows: Sequence[dict], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Rows of :func:`encode_outputs` -> ``{name: (n, 1) array}`` (object for BYTES)."""
    out = {}
    for name in names:
        if name == SCORE:
            out[name] = np.array([[r[name]] for r in rows], dtype=np.float32).reshape(-1, 1)
        else:
            out[name] = np.array([[r[name]] for r in rows], dtype=object).reshape(-1, 1)
    return out
