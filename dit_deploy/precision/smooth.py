"""SmoothQuant-style scale migration: move activation outliers into the weights before INT8.

For an activation ``X`` (..., K) read by MatMuls/Gemms with constant weights ``W`` (K, N),
``X @ W == (X / s) @ (diag(s) W)`` for any positive per-channel ``s`` (K,). With
``s_k = max|X_k|^alpha / max|W_k|^(1 - alpha)`` (over the calibration pairs; the weight
maximum over every consumer's row k) a channel that is 50x louder than the rest no longer
sets the per-tensor activation scale alone: part of its range moves into the weight, which
is quantized per output channel. The graph gains one ``Mul`` by ``1 / s`` per smoothed
activation (FP32; the quantized MatMul reads its output through Q/DQ as before) and the
weights are rescaled in place, so the FP32 graph computes the same function up to rounding.

Migration does not help every activation: on the bundled model it takes all-INT8 mask IoU
from 0.963 to 0.973, on a random-weight ViT-B it takes the logit error from 4% to 26%, and
with maxima from six pairs a channel quiet in calibration is amplified on other pairs. So
each activation is smoothed only where its MatMuls' INT8 error (the graph's own quantization
simulated in NumPy: per-tensor activation scale, per-channel weights) is lower smoothed than
as is, measured on held-out pairs (:class:`Smoothing`).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_bytes_atomic
from .samples import PairSource
from .tensor_stats import _session, float_tensors

# measured on the bundled model (docs/benchmarks.md, "Automatic mixed precision"): all-INT8
# mask IoU 0.963 -> 0.974 at 0.75-0.85, worse below 0.5 (0.925 at 0.2) and past 0.9
DEFAULT_ALPHA = 0.8
# smooth only for a clear gain: errors from a few held-out pairs are noisy, and on a
# random-weight ViT-B the activations whose error fell by less than this (ratios 0.79-0.95)
# together raised the graph's INT8 logit error from 4.0% to 5.3% (docs/benchmarks.md)
MIN_GAIN = 0.1
SMOOTH_SUFFIX = "/smooth"  # the name of an inserted Mul: the activation's name + this
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


def _values(
    model,
    feeds: Iterable[Mapping[str, np.ndarray]],
    names: Sequence[str],
    threads: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Per feed, name -> value of each tensor of ``names`` (graph inputs read from the feed,
    other tensors computed by ONNX Runtime)."""
    types = float_tensors(model)
    graph_inputs = {i.name for i in model.graph.input}
    computed = [n for n in names if n in types and n not in graph_inputs]
    session = _session(model, computed, types, threads) if computed else None
    for feed in feeds:
        values = {n: feed[n] for n in names if n in graph_inputs and n in feed}
        if session is not None:
            inputs = {k: v for k, v in feed.items() if k in graph_inputs}
            values.update(zip(computed, session.run(computed, inputs), strict=True))
        yield values


def channel_sizes(model) -> dict[str, int]:
    """Smoothable activation -> K, its channel count (the consumers' weight K axis)."""
    inits = {t.name: t for t in model.graph.initializer}
    return {a: int(inits[cs[0].weight].dims[cs[0].axis]) for a, cs in smoothable(model).items()}


def channel_maxima(
    model,
    feeds: Iterable[Mapping[str, np.ndarray]],
    names: Iterable[str],
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Name -> max |x| per last-axis channel (K,) of each smoothable tensor over ``feeds``
    (the graph's own inputs), from :mod:`.calibration_pass`'s in-graph reductions."""
    from .calibration_pass import collect_stats

    sizes = channel_sizes(model)
    channels = {n: sizes[n] for n in names if n in sizes}
    stats = collect_stats(
        "fused", {"dit_fused": model}, {"dit_fused": ((), channels)}, feeds, threads
    )["dit_fused"]
    return stats.channel_max


def _int8_codes(w: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel INT8 of a (K, N) weight: (codes (K, N) int8, scale (N,)),
    ``codes * scale`` being what :mod:`.int8` makes of it."""
    scale = np.maximum(np.abs(w).max(axis=0), 1e-12).astype(np.float32) / levels
    return np.clip(np.round(w / scale), -levels, levels).astype(np.int8), scale


def _fake_int8(x: np.ndarray, absmax: float, levels: int = 127) -> np.ndarray:
    """Symmetric per-tensor INT8 quantize-dequantize with scale ``absmax / levels``."""
    scale = np.float32(max(absmax, 1e-12) / levels)
    return np.clip(np.round(x / scale), -levels, levels) * scale


def _as_kn(weight: np.ndarray, axis: int) -> np.ndarray:
    """A consumer's weight as (K, N)."""
    return weight if axis == 0 else weight.T


class Int8ErrorEstimate:
    """Per activation, the relative INT8 error of its MatMuls/Gemms as it is and smoothed
    with ``alpha``: sum |Q(x) Q(W) - x W| / sum |x W| over the values :meth:`add` is given
    (at most ``rows`` rows of x from each), the activation's scale from ``maxima`` (per
    tensor), the weights' per output channel with ``weight_levels`` (127, or 64 for 7-bit
    weights), as :mod:`.int8` quantizes them.

    FP32 products (a relative error of a few percent needs no float64) and the quantized
    weights kept as INT8 codes and scales: at ViT-B the exact weights and both variants
    would otherwise hold 2 GB as float64.
    """

    def __init__(
        self,
        model,
        maxima: Mapping[str, np.ndarray],
        alpha: float,
        rows: int = 512,
        weight_levels: int = 127,
    ) -> None:
        from onnx import numpy_helper

        inits = {t.name: t for t in model.graph.initializer}
        self.rows = rows
        self.consumers = {a: c for a, c in smoothable(model).items() if a in maxima}
        self._variants: dict[str, list[tuple[np.ndarray | None, float, list]]] = {}
        self._weights: dict[str, list[np.ndarray]] = {}
        for a, cs in self.consumers.items():
            ws = [
                _as_kn(numpy_helper.to_array(inits[c.weight]), c.axis).astype(np.float32)
                for c in cs
            ]
            x_max = maxima[a].astype(np.float32)
            s = migration_scales(x_max, np.max([np.abs(w).max(axis=1) for w in ws], axis=0), alpha)
            self._weights[a] = ws
            plain = [_int8_codes(w, weight_levels) for w in ws]
            smoothed = [_int8_codes(w * s[:, None], weight_levels) for w in ws]
            self._variants[a] = [
                (None, float(x_max.max()), plain),
                (s, float((x_max / s).max()), smoothed),
            ]
        self._sums = {a: np.zeros(2) for a in self.consumers}
        self._total = dict.fromkeys(self.consumers, 0.0)

    def add(self, values: Mapping[str, np.ndarray]) -> None:
        """Fold in one pair's activations (name -> value, (..., K))."""
        for a, x in values.items():
            if a not in self.consumers:
                continue
            x = np.asarray(x, np.float32).reshape(-1, x.shape[-1])
            x = x[:: max(1, len(x) // self.rows)][: self.rows]
            exact = [x @ w for w in self._weights[a]]
            self._total[a] += sum(float(np.abs(y).sum(dtype=np.float64)) for y in exact)
            for i, (s, absmax, quantized) in enumerate(self._variants[a]):
                xq = _fake_int8(x if s is None else x / s, absmax)
                for (codes, scale), y in zip(quantized, exact, strict=True):
                    got = (xq @ codes.astype(np.float32)) * scale
                    self._sums[a][i] += float(np.abs(got - y).sum(dtype=np.float64))

    def result(self) -> dict[str, tuple[float, float]]:
        """Activation -> (error as it is, error smoothed)."""
        return {
            a: tuple(float(v) / max(self._total[a], 1e-30) for v in self._sums[a])
            for a in self.consumers
        }


def int8_errors(
    model,
    feeds: Iterable[Mapping[str, np.ndarray]],
    maxima: Mapping[str, np.ndarray],
    alpha: float,
    threads: int | None = None,
    rows: int = 512,
    weight_levels: int = 127,
) -> dict[str, tuple[float, float]]:
    """:class:`Int8ErrorEstimate` of ``model``'s smoothable activations over ``feeds`` (the
    graph's own inputs)."""
    estimate = Int8ErrorEstimate(model, maxima, alpha, rows, weight_levels)
    for values in _values(model, feeds, sorted(estimate.consumers), threads):
        estimate.add(values)
    return estimate.result()


@dataclass
class Smoothing:
    """What decides the migration of one graph: per activation its channel maxima (on the
    calibration pairs) and its MatMuls' INT8 error as is and smoothed with ``alpha`` (on
    held-out pairs: maxima taken on few pairs can shrink a channel that later wakes up,
    which only other pairs show)."""

    alpha: float
    maxima: dict[str, np.ndarray]
    errors: dict[str, tuple[float, float]]

    def strengths(self) -> dict[str, float]:
        """Activation -> alpha, for the activations where smoothing lowers the error by at
        least ``MIN_GAIN``."""
        keep = 1.0 - MIN_GAIN
        return {
            a: self.alpha for a, (plain, smoothed) in self.errors.items() if smoothed < keep * plain
        }


class SmoothingCache:
    """Where the :class:`Smoothing` of one graph, measured on given pairs with a given
    ``alpha``, is kept (``cache_dir/ROLE.smoothing.KEY.npz``); a damaged entry reads as
    missing."""

    def __init__(
        self,
        model,
        cache_dir: Path,
        role: str,
        graph_sha256: str,
        sources: Sequence[PairSource],
        alpha: float,
        weight_levels: int = 127,
    ) -> None:
        self.alpha = alpha
        self.names = sorted(smoothable(model))
        key = json.dumps(
            {
                "graph": graph_sha256,
                "data": [s.key() for s in sources],
                "names": self.names,
                "alpha": alpha,
                "estimate": "fp32-512-rows",  # how the errors are measured (Int8ErrorEstimate)
                **({"weight_levels": weight_levels} if weight_levels != 127 else {}),
            },
            sort_keys=True,
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        self.path = Path(cache_dir) / f"{role}.smoothing.{digest}.npz"

    def load(self) -> Smoothing | None:
        names = self.names
        wanted = sorted([f"max:{n}" for n in names] + [f"err:{n}" for n in names])
        if not self.path.is_file():
            return None
        try:
            with np.load(self.path) as data:
                if sorted(data.files) != wanted:
                    return None
                maxima = {n: data[f"max:{n}"] for n in names}
                errors = {
                    n: (float(data[f"err:{n}"][0]), float(data[f"err:{n}"][1])) for n in names
                }
                return Smoothing(self.alpha, maxima, errors)
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
            return None

    def save(self, found: Smoothing) -> None:
        arrays = {f"max:{n}": found.maxima[n] for n in self.names}
        arrays |= {f"err:{n}": np.array(found.errors[n]) for n in self.names}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.path, buffer.getvalue())


def cached_smoothing(
    model,
    calib: Callable[[], Iterable[Mapping[str, np.ndarray]]],
    held_out: Callable[[], Iterable[Mapping[str, np.ndarray]]],
    alpha: float,
    cache_dir: Path,
    role: str,
    graph_sha256: str,
    sources: Sequence[PairSource],
    threads: int | None = None,
    weight_levels: int = 127,
) -> tuple[Smoothing, bool]:
    """The :class:`Smoothing` of one graph fed its own inputs: channel maxima over
    ``calib()``, errors over ``held_out()`` (the pairs ``sources`` name, in that order). From
    the :class:`SmoothingCache` when the same graph was measured on the same pairs with the
    same ``alpha`` (neither is then called); and whether the cache was hit."""
    cache = SmoothingCache(model, cache_dir, role, graph_sha256, sources, alpha, weight_levels)
    found = cache.load()
    if found is not None:
        return found, True
    maxima = channel_maxima(model, calib(), cache.names, threads)
    errors = int8_errors(model, held_out(), maxima, alpha, threads, weight_levels=weight_levels)
    found = Smoothing(alpha, maxima, errors)
    cache.save(found)
    return found, False


def migration_scales(x_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """``s = max|X|^alpha / max|W|^(1 - alpha)`` per channel (K,), both floored at 1e-5."""
    x_max = np.maximum(x_max.astype(np.float64), _EPS)
    w_max = np.maximum(w_max.astype(np.float64), _EPS)
    return (x_max**alpha / w_max ** (1.0 - alpha)).astype(np.float32)


def smooth(model, maxima: Mapping[str, np.ndarray], strengths: Mapping[str, float]):
    """A copy of ``model`` with each activation of ``strengths`` (name -> alpha) smoothed
    (channel maxima from ``maxima``); returns the model and the names of the MatMul/Gemm
    nodes whose inputs changed."""
    from onnx import helper, numpy_helper

    for name, alpha in strengths.items():
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"{name}: alpha {alpha}, a migration strength in [0, 1]")
    model = copy.deepcopy(model)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    producer_index = {o: i for i, n in enumerate(graph.node) for o in n.output}
    changed: list[str] = []
    inserts: list[tuple[int, object]] = []
    for activation, consumers in smoothable(model).items():
        if activation not in strengths or activation not in maxima:
            continue
        alpha = strengths[activation]
        weights = {c.weight: numpy_helper.to_array(inits[c.weight]) for c in consumers}
        w_max = np.max([np.abs(weights[c.weight]).max(axis=1 - c.axis) for c in consumers], axis=0)
        x_max = maxima[activation]
        if x_max.shape != w_max.shape:
            continue
        s = migration_scales(x_max, w_max, alpha)
        scaled = f"{activation}_smoothed"
        inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{scaled}_inv_scale")
        graph.initializer.append(inv)
        mul = helper.make_node(
            "Mul", [activation, inv.name], [scaled], name=activation + SMOOTH_SUFFIX
        )
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
