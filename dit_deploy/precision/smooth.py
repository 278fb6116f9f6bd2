"""SmoothQuant-style scale migration: move activation outliers into the weights before INT8.

For an activation ``X`` (..., K) read by MatMuls/Gemms with constant weights ``W`` (K, N),
``X @ W == (X / s) @ (diag(s) W)`` for any positive per-channel ``s`` (K,). With
``s_k = max|X_k|^alpha / max|W_k|^(1 - alpha)`` (over the calibration pairs; the weight
maximum over every consumer's row k) a channel that is 50x louder than the rest no longer
sets the per-tensor activation scale alone: part of its range moves into the weight, which
is quantized per output channel. The graph gains one ``Mul`` by ``1 / s`` per smoothed
activation (FP32; the quantized MatMul reads its output through Q/DQ as before) and the
weights are rescaled in place, so the FP32 graph computes the same function up to rounding.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_bytes_atomic
from .samples import PairSource
from .tensor_stats import _session, float_tensors

# measured on the bundled model (docs/benchmarks.md, "Automatic mixed precision"): all-INT8
# mask IoU 0.963 -> 0.974 at 0.75-0.85, worse below 0.5 (0.925 at 0.2) and past 0.9
DEFAULT_ALPHA = 0.8
_EPS = 1e-5


@dataclass(frozen=True)
class Consumer:
    """A MatMul/Gemm reading the activation at ``input[0]`` and a constant weight; ``axis``
    is the weight's K (input-channel) axis."""

    node: str
    weight: str
    axis: int


def smoothable(model) -> dict[str, list[Consumer]]:
    """Activation name -> the MatMul/Gemm nodes that read it with a 2-D constant weight."""
    inits = {t.name: t for t in model.graph.initializer}
    found: dict[str, list[Consumer]] = {}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        weight = inits.get(node.input[1])
        if weight is None or len(weight.dims) != 2 or node.input[0] in inits:
            continue
        attrs = {a.name: a.i for a in node.attribute if a.name in ("transA", "transB")}
        if attrs.get("transA", 0):
            continue
        axis = 1 if (node.op_type == "Gemm" and attrs.get("transB", 0)) else 0
        found.setdefault(node.input[0], []).append(Consumer(node.name, weight.name, axis))
    return found


def channel_maxima(
    model,
    feeds: Iterable[Mapping[str, np.ndarray]],
    names: Iterable[str],
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Name -> max |x| per last-axis channel (K,) of each tensor over ``feeds``."""
    types = float_tensors(model)
    graph_inputs = {i.name for i in model.graph.input}
    names = [n for n in names if n in types]
    session = _session(model, names, types, threads)
    peaks: dict[str, np.ndarray] = {}
    for feed in feeds:
        values = session.run(names, {k: v for k, v in feed.items() if k in graph_inputs})
        for name, value in zip(names, values, strict=True):
            value = np.abs(np.asarray(value, np.float32))
            peak = value.reshape(-1, value.shape[-1]).max(axis=0)
            peaks[name] = np.maximum(peaks[name], peak) if name in peaks else peak
    return peaks


def cached_channel_maxima(
    model,
    feeds: Iterable[Mapping[str, np.ndarray]],
    cache_dir: Path,
    role: str,
    graph_sha256: str,
    source: PairSource,
    threads: int | None = None,
) -> tuple[dict[str, np.ndarray], bool]:
    """:func:`channel_maxima` of every smoothable activation, from ``cache_dir`` when the
    same graph was measured on the same pairs (``feeds`` is then not read); and whether the
    cache was hit."""
    names = sorted(smoothable(model))
    key = json.dumps({"graph": graph_sha256, "data": source.key(), "names": names}, sort_keys=True)
    path = Path(cache_dir) / f"{role}.channels.{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if path.is_file():
        try:
            with np.load(path) as data:
                if sorted(data.files) == names:
                    return {n: data[n] for n in names}, True
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            pass  # a damaged cache entry is measured again and replaced
    maxima = channel_maxima(model, feeds, names, threads)
    buffer = io.BytesIO()
    np.savez(buffer, **maxima)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buffer.getvalue())
    return maxima, False


def migration_scales(x_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """``s = max|X|^alpha / max|W|^(1 - alpha)`` per channel (K,), both floored at 1e-5."""
    x_max = np.maximum(x_max.astype(np.float64), _EPS)
    w_max = np.maximum(w_max.astype(np.float64), _EPS)
    return (x_max**alpha / w_max ** (1.0 - alpha)).astype(np.float32)


def smooth(model, maxima: Mapping[str, np.ndarray], alpha: float = 0.5):
    """A copy of ``model`` with every activation in ``maxima`` smoothed; returns the model
    and the names of the MatMul/Gemm nodes whose inputs changed."""
    from onnx import helper, numpy_helper

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha {alpha}: a migration strength in [0, 1]")
    model = copy.deepcopy(model)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    producer_index = {o: i for i, n in enumerate(graph.node) for o in n.output}
    changed: list[str] = []
    inserts: list[tuple[int, object]] = []
    for activation, consumers in smoothable(model).items():
        if activation not in maxima:
            continue
        weights = {c.weight: numpy_helper.to_array(inits[c.weight]) for c in consumers}
        w_max = np.max([np.abs(weights[c.weight]).max(axis=1 - c.axis) for c in consumers], axis=0)
        x_max = maxima[activation]
        if x_max.shape != w_max.shape:
            continue
        s = migration_scales(x_max, w_max, alpha)
        scaled = f"{activation}_smoothed"
        inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{scaled}_inv_scale")
        graph.initializer.append(inv)
        mul = helper.make_node("Mul", [activation, inv.name], [scaled], name=f"{activation}/smooth")
        at = producer_index.get(activation, -1) + 1
        inserts.append((at, mul))
        for c in consumers:
            w = weights[c.weight]
            shape = (-1, 1) if c.axis == 0 else (1, -1)
            new = numpy_helper.from_array(
                (w * s.reshape(shape)).astype(np.float32), f"{c.weight}_smoothed_{c.node}"
            )
            graph.initializer.append(new)
            node = nodes[c.node]
            node.input[0], node.input[1] = scaled, new.name
            changed.append(c.node)
    for at, mul in sorted(inserts, key=lambda item: -item[0]):
        graph.node.insert(at, mul)
    used = {name for n in graph.node for name in n.input}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)
    return model, changed
