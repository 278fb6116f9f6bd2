"""Referring expressions of the synthetic dataset (:mod:`dit_deploy.data.synthetic`).

A small grammar::

    attribute   the [small|big] [<colour>] <shape>|one     "the small blue square"
    position    the leftmost <head> / the <head> at the bottom    "the green one at the bottom"
    size        the biggest|largest|smallest <head>        "the biggest triangle"
    relation    the <head> (to the) left of|right of|above|below the <head>
                "the yellow square left of the red circle"

An expression is kept only if it denotes exactly its target in its scene, with margins
(positions at least ``POSITION_MARGIN`` x size apart, areas at least ``AREA_RATIO`` apart) so
that it is unambiguous to a human too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .synthetic_scenes import SceneObject, pick

#: Spatial words need the target to beat every competitor by this fraction of the image side.
POSITION_MARGIN = 0.08
#: "biggest"/"smallest" need this area ratio between the target and every competitor.
AREA_RATIO = 1.5
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
        template = pick(rng, table[self.direction])
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
