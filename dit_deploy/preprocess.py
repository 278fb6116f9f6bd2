"""Image loading and the DIT letterbox (numpy + Pillow only, no torch).

The letterbox reproduces the authors' evaluation transform (``RandomResize([512])``,
``ToTensor``, ``NormalizeAndPad``): long side -> ``size`` with PIL bilinear (what torchvision's
``F.resize`` does on a PIL image), /255, ImageNet normalisation, then a centred paste on a zero
canvas (zero AFTER normalisation, i.e. the padding is not "black").
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageError, InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MAX_PIXELS = 100_000_000
# the raster formats an image file may be in (Pillow's format ids; "JPEG" also opens the
# multi-picture JPEGs of phone cameras, as MPO). Without the list Pillow also parses a dozen
# rarer formats and hands EPS/PostScript to Ghostscript, for any bytes a file or client sends.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
IMAGE_FORMATS_TEXT = "JPEG, PNG, WebP, BMP, TIFF or GIF"
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")

ImageSource = str | os.PathLike | Image.Image | np.ndarray


@dataclass(frozen=True)
class Letterbox:
    """Where the resized image sits on the ``size`` x ``size`` canvas.

    The valid region is ``canvas[top:top + new_h, left:left + new_w]``; it maps back to the
    original ``orig_h`` x ``orig_w`` image.
    """

    orig_h: int
    orig_w: int
    new_h: int
    new_w: int
    top: int
    left: int
    size: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> Letterbox:
        try:
            return cls(**{k: int(data[k]) for k in cls.__dataclass_fields__})
        except KeyError as exc:
            raise InputError(
                f"letterbox dict lacks the key {exc}; got keys {sorted(data)}"
            ) from exc


def _check_size(h: int, w: int, what: str, max_pixels: int, input_size: int | None) -> None:
    if h == 0 or w == 0:
        raise ImageError(f"{what} has zero size ({h}x{w} pixels); pass a non-empty image.")
    if h * w > max_pixels:
        raise ImageError(
            f"{what} has {h}x{w} = {h * w} pixels, more than max_pixels={max_pixels} "
            "(decompression-bomb guard); downscale it or pass a larger max_pixels."
        )
    if input_size is not None:
        new_h, new_w = _resized_shape(h, w, input_size)
        if new_h == 0 or new_w == 0:
            raise ImageError(
                f"{what} is {h}x{w} pixels: its short side rounds to 0 when the long side is "
                f"resized to {input_size}; crop or pad it to a less extreme aspect ratio."
            )


def _array_to_rgb(a: np.ndarray, what: str) -> np.ndarray:
    """(H,W), (H,W,1), (H,W,3) or (H,W,4) of uint8/uint16/float/bool -> uint8 (H,W,3).

    uint16 -> ``value >> 8``; float (must lie in [0, 1]) -> ``round(x * 255)``; bool -> 0/255;
    gray is replicated to 3 channels; a 4th (alpha) channel is dropped.
    """
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise ImageError(
            f"{what} has shape {a.shape}; expected (H, W), (H, W, 1), (H, W, 3) RGB or "
            "(H, W, 4) RGBA."
        )
    if a.dtype == np.uint8:
        out = a
    elif a.dtype == np.uint16:
        out = (a >> 8).astype(np.uint8)
    elif a.dtype == np.bool_:
        out = a.astype(np.uint8) * np.uint8(255)
    elif a.dtype in (np.float32, np.float64):
        if a.size and not np.isfinite(a).all():
            raise ImageError(f"{what} is a float image containing NaN or inf; fix the pixels.")
        if a.size and not (a.min() >= 0.0 and a.max() <= 1.0):
            raise ImageError(
                f"{what} is a float image with values in [{a.min()}, {a.max()}]; float images "
                "must lie in [0, 1]: divide by 255 or pass uint8."
            )
        out = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    else:
        raise ImageError(
            f"{what} has dtype {a.dtype}; pass uint8, uint16, bool or float32/float64 in [0, 1]."
        )
    if out.ndim == 2:
        out = out[:, :, None]
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out[:, :, :3])


def _pil_to_rgb(im: Image.Image, what: str) -> np.ndarray:
    """Any PIL mode -> uint8 (H, W, 3). Alpha is dropped, not composited (as ``convert('RGB')``)."""
    if im.mode in _SIXTEEN_BIT_MODES:
        a = np.asarray(im).astype(np.int64)
        return _array_to_rgb(np.clip(a, 0, 65535).astype(np.uint16), what)
    if im.mode == "F":
        return _array_to_rgb(np.asarray(im, dtype=np.float32), what)
    if im.mode != "RGB":
        try:
            im = im.convert("RGB")
        except (ValueError, OSError) as exc:
            raise ImageError(
                f"{what} has PIL mode {im.mode!r}, which has no RGB conversion."
            ) from exc
    return np.array(im, dtype=np.uint8)


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    input_size: int | None = None,
) -> np.ndarray:
    """Load an image as uint8 RGB (H, W, 3).

    Args:
        source: a file path, a ``PIL.Image.Image`` or an ``np.ndarray`` ((H,W), (H,W,1),
            (H,W,3), (H,W,4); uint8, uint16, bool, or float32/64 in [0, 1]).
        max_pixels: refuse images with more pixels (decompression-bomb guard). Pillow's own
            guard (``PIL.Image.MAX_IMAGE_PIXELS``, ~179 Mpx hard limit) still applies to files.
        input_size: when given, also refuse images whose short side would round to 0 pixels
            once the long side is resized to ``input_size``.

    Conversions: EXIF orientation is applied to files and PIL images; gray / 1-bit -> gray
    replicated; RGBA / LA / PA -> RGB by DROPPING alpha (no compositing on white: this is what
    the authors' ``Image.open(p).convert('RGB')`` does); palette, CMYK, YCbCr -> RGB via
    Pillow; 16-bit ('I;16*', 'I' clipped to [0, 65535], uint16 arrays) -> ``value >> 8``
    (Pillow's own ``convert('RGB')`` would clip at 255 instead); float ('F', float arrays) ->
    ``round(x * 255)``. Multi-frame files give their first frame. Files must be in one of
    :data:`IMAGE_FORMATS`.

    Raises:
        ImageError: missing or undecodable file, unsupported shape/dtype/mode, empty image,
            too many pixels, or a short side that vanishes at ``input_size``.
        InputError: ``max_pixels`` or ``input_size`` is not a positive integer.
    """
    for name, value in (("max_pixels", max_pixels), ("input_size", input_size)):
        if value is None and name == "input_size":
            continue
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(source, np.ndarray):
        what = f"image array of shape {source.shape}"
        if source.ndim in (2, 3):
            _check_size(source.shape[0], source.shape[1], what, max_pixels, input_size)
        return _array_to_rgb(source, what)
    if isinstance(source, Image.Image):
        what = f"PIL image ({source.mode}, {source.width}x{source.height})"
        _check_size(source.height, source.width, what, max_pixels, input_size)
        try:
            source.load()  # a lazily opened file decodes here
        except Exception as exc:
            raise ImageError(f"cannot decode {what}: {exc}; it is corrupt or truncated.") from exc
        return _pil_to_rgb(_exif_transpose(source, what), what)
    if isinstance(source, (str, os.PathLike)):
        return _load_file(Path(source), max_pixels, input_size)
    raise ImageError(
        f"cannot load an image from {type(source).__name__}; pass a path, a PIL image "
        "or a numpy array."
    )


def _exif_transpose(im: Image.Image, what: str) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception as exc:  # a malformed EXIF block must not pass silently
        raise ImageError(f"cannot apply the EXIF orientation of {what}: {exc}") from exc


def _load_file(path: Path, max_pixels: int, input_size: int | None) -> np.ndarray:
    what = f"image file {path}"
    if path.is_dir():
        raise ImageError(f"{path} is a directory; give an image file")
    if not path.is_file():
        raise ImageError(f"image file not found: {path}")
    try:
        im = Image.open(path, formats=IMAGE_FORMATS)
    except _PILLOW_ERRORS as exc:
        raise _decode_error(what, exc) from exc
    with im:
        # outside the decoding guard: a size problem is reported as itself
        _check_size(im.height, im.width, what, max_pixels, input_size)
        try:
            im.load()  # force decoding: catches corrupt and truncated files here
        except _PILLOW_ERRORS as exc:
            raise _decode_error(what, exc) from exc
        return _pil_to_rgb(_exif_transpose(im, what), what)


# what Pillow raises on files it cannot decode (it has no single base class for them)
# (DecompressionBombError derives from Exception only: a 30000 x 30000 header raises it at open)
_PILLOW_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error,
    Image.DecompressionBombError,
)  # fmt: skip


def _decode_error(what: str, exc: BaseException) -> ImageError:
    if isinstance(exc, Image.DecompressionBombError):
        return ImageError(
            f"{what} exceeds Pillow's decompression-bomb limit ({exc}); raise "
            "PIL.Image.MAX_IMAGE_PIXELS as well as max_pixels if you trust it."
        )
    return ImageError(
        f"cannot decode {what}: {exc}. It is not a {IMAGE_FORMATS_TEXT} file, or it is "
        "truncated; re-save or re-download it."
    )


def _resized_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """(new_h, new_w) with the long side = size, Python ``round`` as the authors."""
    ratio = float(size / float(max(h, w)))
    return round(h * ratio), round(w * ratio)


def letterbox(
    image: np.ndarray,
    size: int = 512,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[np.ndarray, Letterbox]:
    """Resize the long side to ``size``, normalise, and centre on a zero canvas.

    Args:
        image: uint8 RGB (H, W, 3), e.g. from :func:`load_image`.

    Returns:
        float32 (3, size, size) and the :class:`Letterbox` that maps it back. The pad is
        0.0 after normalisation; top = round(dh/2 - 0.1), left = round(dw/2 - 0.1).
    """
    if not (
        isinstance(image, np.ndarray)
        and image.dtype == np.uint8
        and image.ndim == 3
        and image.shape[2] == 3
    ):
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image)
        raise ImageError(f"letterbox needs uint8 RGB (H, W, 3), got {desc}; use load_image().")
    h, w = image.shape[:2]
    _check_size(h, w, "image", h * w, size)
    new_h, new_w = _resized_shape(h, w, size)
    if (new_h, new_w) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    x = image.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    top = round((size - new_h) / 2.0 - 0.1)
    left = round((size - new_w) / 2.0 - 0.1)
    canvas = np.zeros((3, size, size), dtype=np.float32)
    canvas[:, top : top + new_h, left : left + new_w] = x.transpose(2, 0, 1)
    return canvas, Letterbox(h, w, new_h, new_w, top, left, size)


def preprocess_batch(
    images: Sequence[ImageSource],
    size: int = 512,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, list[Letterbox]]:
    """Load and letterbox B images -> (float32 (B, 3, size, size), [Letterbox] * B)."""
    arrays, boxes = [], []
    for source in images:
        rgb = load_image(source, max_pixels=max_pixels, input_size=size)
        x, box = letterbox(rgb, size, mean, std)
        arrays.append(x)
        boxes.append(box)
    if not arrays:
        return np.zeros((0, 3, size, size), np.float32), []
    return np.stack(arrays), boxes
