"""Example predictions as pictures: image + expression, predicted mask beside the ground truth.

One PNG per backend/precision, so a person can look and see that INT8 still segments the
right object. Pillow only (no torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .metrics import mask_iou

PANEL = 256  # long side of each panel, pixels
PRED_COLOUR = (0, 230, 255)
GT_COLOUR = (255, 255, 255)


@dataclass(frozen=True)
class Example:
    image: np.ndarray  # uint8 (H, W, 3)
    text: str
    gt: np.ndarray  # bool (H, W)
    pred: np.ndarray  # bool (H, W)


def _font(size: int) -> ImageFont.ImageFont:
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    colour: tuple[int, int, int],
    long_side: int | None = PANEL,
) -> Image.Image:
    """The image (uint8 (H, W, 3)) with its long side at ``long_side`` (None: as it is),
    dimmed outside ``mask`` (bool (H, W)), the mask outlined in ``colour``.

    Dimming rather than tinting keeps the object's own colour readable.
    """
    h, w = mask.shape
    scale = 1.0 if long_side is None else long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    base = Image.fromarray(image).convert("RGB")
    inside_image = Image.fromarray(mask.astype(np.uint8) * 255)
    if size != (w, h):
        base = base.resize(size, Image.BICUBIC)
        inside_image = inside_image.resize(size, Image.NEAREST)
    base = np.asarray(base)
    inside = np.asarray(inside_image) > 0
    out = np.where(inside[..., None], base, (base * 0.4).astype(np.uint8))
    grown = inside.copy()
    for axis, shift in ((0, 1), (0, -1), (1, 1), (1, -1), (0, 2), (0, -2), (1, 2), (1, -2)):
        grown |= np.roll(inside, shift, axis)
    out[grown & ~inside] = colour
    return Image.fromarray(out)


def wrap(text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels in ``font`` (broken between words)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def render(examples: Sequence[Example], title: str) -> Image.Image:
    """Rows of [prediction | ground truth] with the expression above and the IoU beside."""
    pad, banner = 8, 40
    width = 2 * PANEL + 3 * pad
    font = _font(20)
    lines = wrap(title, font, width - 2 * pad)
    top = 14 + 26 * len(lines)
    height = top + len(examples) * (PANEL + banner + pad)
    sheet = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    for k, line in enumerate(lines):
        draw.text((pad, 10 + 26 * k), line, fill=(0, 0, 0), font=font)
    y = top
    for ex in examples:
        iou, _, _ = mask_iou(ex.pred, ex.gt)
        draw.text((pad, y), f'"{ex.text}"', fill=(0, 0, 0), font=_font(16))
        draw.text((pad, y + 20), f"prediction  IoU {iou:.2f}", fill=(90, 90, 90), font=_font(13))
        draw.text((PANEL + 2 * pad, y + 20), "ground truth", fill=(90, 90, 90), font=_font(13))
        sheet.paste(overlay(ex.image, ex.pred, PRED_COLOUR), (pad, y + banner))
        sheet.paste(overlay(ex.image, ex.gt, GT_COLOUR), (PANEL + 2 * pad, y + banner))
        y += PANEL + banner + pad
    return sheet


def write_gallery(examples: Sequence[Example], title: str, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render(examples, title).save(path)
    return path
