"""Scenes of the synthetic dataset (:mod:`dit_deploy.data.synthetic`): objects sampled so that
several share a shape or a colour, drawn on a noisy, textured background.

Objects differ in shape (circle, square, triangle, cross), colour (red, green, blue, yellow,
purple, orange), size (small, big) and position, and never overlap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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


def pick(rng: np.random.Generator, items: Sequence[str]) -> str:
    """One of ``items``, drawn uniformly from ``rng``."""
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
                    pick(rng, used_shapes)
                    if used_shapes and rng.random() < 0.5
                    else pick(rng, SHAPES)
                )
                color = (
                    pick(rng, used_colors)
                    if used_colors and rng.random() < 0.4
                    else pick(rng, colors)
                )
                size_class = pick(rng, SIZES)
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
