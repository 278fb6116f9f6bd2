"""One FP32 pass over the calibration pairs for every graph of a layout at once.

INT8 needs two things from the calibration pairs: the largest magnitude of every tensor it
quantizes (the symmetric MinMax ranges ONNX Runtime's ``quantize_static`` would otherwise
collect in a calibration pass of its own, one graph at a time) and, for smoothing
(:mod:`.smooth`), the per-channel maxima of the MatMul inputs. Both come from one run of
the layout's graphs in order (``text_encoder -> dit_encoder -> mask_decoder``, or
``dit_fused``), each graph extended with ``ReduceMax(Abs(x))`` outputs, so a pair costs one
forward of the layout and only scalars and (K,) vectors leave the runtime. At ViT-B this
replaces one forward per graph *and* per statistic (the decoder's inputs alone need the
encoder) and ONNX Runtime's calibration session, which held every intermediate tensor of a
pair (8.7 GB peak).

The ranges are written as ONNX Runtime's own calibration cache (``save_tensors_data``), so
``quantize_static`` reads them instead of calibrating; a smoothed activation's range follows
from its channel maxima and the migration scales exactly (``max_k max|x_k| / s_k``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runtime.manifest import LAYOUT_ROLES

_FLOAT_TYPES = (1, 10)  # onnx.TensorProto.FLOAT, FLOAT16
ABSMAX_SUFFIX = "/calib_absmax"
CHANNEL_SUFFIX = "/calib_channel_max"


@dataclass
class GraphStats:
    """What one graph's tensors held over the calibration pairs.

    ``absmax``: tensor -> max |x| (every tensor INT8 quantizes); ``channel_max``: activation
    -> (K,) max |x| per last-axis channel (the smoothable MatMul inputs)."""

    absmax: dict[str, float] = field(default_factory=dict)
    channel_max: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, name: str, value: np.ndarray, channels: bool) -> None:
        value = np.asarray(value, np.float32)
        if channels:
            old = self.channel_max.get(name)
            self.channel_max[name] = value if old is None else np.maximum(old, value)
            value = value.max(initial=0.0)
        peak = float(np.nan_to_num(value, nan=0.0, posinf=np.inf).max(initial=0.0))
        self.absmax[name] = max(self.absmax.get(name, 0.0), peak)


def calibrated_tensors(model, op_types: Sequence[str]) -> list[str]:
    """The tensors ONNX Runtime's MinMax calibrator ranges: every float input and output of
    an ``op_types`` node that is not a constant, in graph order."""
    from .tensor_stats import float_tensors

    types = float_tensors(model)
    types.update({i.name: i.type.tensor_type.elem_type for i in model.graph.input})
    constants = {t.name for t in model.graph.initializer}
    seen: dict[str, None] = {}
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        for name in (*node.input, *node.output):
            if name and name not in constants and types.get(name) in _FLOAT_TYPES:
                seen.setdefault(name, None)
    return list(seen)


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)


def stats_model(model, absmax: Sequence[str], channels: Mapping[str, int], raw: Sequence[str] = ()):
    """A copy of ``model`` that also outputs ``name + ABSMAX_SUFFIX`` (a scalar) for each of
    ``absmax``, ``name + CHANNEL_SUFFIX`` ((K,)) for each ``channels`` name -> K, and each
    tensor of ``raw`` itself."""
    from onnx import TensorProto, helper, numpy_helper

    from .tensor_stats import float_tensors

    probe = copy.deepcopy(model)
    graph = probe.graph
    new_axes = _opset(probe) >= 18  # ReduceMax's axes moved from an attribute to an input
    added: dict[str, list] = {}  # tensor -> the nodes observing it

    def reduce_max(x: str, out: str, axes: list[int] | None):
        if axes is None:
            return helper.make_node("ReduceMax", [x], [out], keepdims=0)
        if new_axes:
            const = numpy_helper.from_array(np.array(axes, np.int64), f"{out}/axes")
            graph.initializer.append(const)
            return helper.make_node("ReduceMax", [x, const.name], [out], keepdims=0)
        return helper.make_node("ReduceMax", [x], [out], axes=axes, keepdims=0)

    for name, k in channels.items():
        stem = name + CHANNEL_SUFFIX
        shape = numpy_helper.from_array(np.array([-1, k], np.int64), f"{stem}/shape")
        graph.initializer.append(shape)
        added[name] = [
            helper.make_node("Reshape", [name, shape.name], [f"{stem}/rows"]),
            helper.make_node("Abs", [f"{stem}/rows"], [f"{stem}/abs"]),
            reduce_max(f"{stem}/abs", stem, [0]),
        ]
        graph.output.append(helper.make_tensor_value_info(stem, TensorProto.FLOAT, [k]))
    for name in absmax:
        if name in channels:
            continue  # its maximum is the largest channel maximum
        stem = name + ABSMAX_SUFFIX
        added[name] = [
            helper.make_node("Abs", [name], [f"{stem}/abs"]),
            reduce_max(f"{stem}/abs", stem, None),
        ]
        graph.output.append(helper.make_tensor_value_info(stem, TensorProto.FLOAT, []))
    # each reduction right after its tensor's producer (see _session)
    order = [n for name in [i.name for i in graph.input] for n in added.pop(name, [])]
    for node in graph.node:
        order.append(node)
        order.extend(n for out in node.output for n in added.pop(out, []))
    del graph.node[:]
    graph.node.extend(order)
    existing = {o.name for o in graph.output}
    types = float_tensors(model) if raw else {}
    for name in raw:
        if name not in existing and name in types:
            graph.output.append(helper.make_tensor_value_info(name, types[name], None))
    return probe


def _session(model: bytes, threads: int | None):
    """An ONNX Runtime session over a serialized model (as ONNX Runtime's calibrator sets it
    up)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # as ONNX Runtime's calibrator: no fusion, so every named tensor is the unfused one
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # the graph's own node order, where each reduction follows its tensor's producer: the
    # default order ran the reductions late and kept the observed tensors alive until then
    # (ViT-B encoder: 4.2-6.5 GB peak, 2.3 GB with this)
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class ObservedLayout:
    """The FP32 graphs of one layout, run in order, each with extra outputs.

    Args:
        layout: ``split`` or ``fused``.
        models: role -> FP32 ``ModelProto`` of every role of the layout (observed or not).
        extend: role -> the extended copy to run instead (:func:`stats_model`), or None to
            run the role as it is; called once per role, and each copy is dropped as soon
            as its session is open (at ViT-B a copy is 0.5 GB).
    """

    def __init__(
        self,
        layout: str,
        models: Mapping[str, object],
        extend: Callable[[str], object | None],
        threads: int | None = None,
    ) -> None:
        self.roles = LAYOUT_ROLES[layout]
        self._sessions = {}
        self._outputs: dict[str, list[str]] = {}
        for role in self.roles:
            model = extend(role)
            data = (models[role] if model is None else model).SerializeToString()
            del model
            self._sessions[role] = _session(data, threads)
            del data
            self._outputs[role] = [o.name for o in models[role].graph.output]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        """Role -> its inputs and every output of its (extended) graph, for one prepared
        pair's ``feeds``."""
        values = dict(feeds)
        observed = {}
        for role in self.roles:
            session = self._sessions[role]
            inputs = {i.name: values[i.name] for i in session.get_inputs()}
            names = [o.name for o in session.get_outputs()]
            out = dict(zip(names, session.run(names, inputs), strict=True))
            values.update({n: out[n] for n in self._outputs[role]})
            observed[role] = {**inputs, **out}
        return observed

    def close(self) -> None:
        self._sessions.clear()


def collect_stats(
    layout: str,
    models: Mapping[str, object],
    observe: Mapping[str, tuple[Sequence[str], Mapping[str, int]]],
    feeds: Iterable[Mapping[str, np.ndarray]],
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, GraphStats]:
    """Role -> :class:`GraphStats` over ``feeds`` (prepared pairs) for each role of
    ``observe`` (role -> (tensors to range, activation -> K for channel maxima))."""

    def extend(role: str):
        if role not in observe:
            return None
        absmax, channels = observe[role]
        return stats_model(models[role], absmax, channels)

    runner = ObservedLayout(layout, models, extend, threads)
    stats = {role: GraphStats() for role in observe}
    try:
        for feed in feeds:
            observed = runner.run(feed)
            for role, (absmax, channels) in observe.items():
                out = observed[role]
                for name in channels:
                    stats[role].add(name, out[name + CHANNEL_SUFFIX], True)
                for name in absmax:
                    if name not in channels:
                        stats[role].add(name, out[name + ABSMAX_SUFFIX], False)
            if progress:
                progress(1)
    finally:
        runner.close()
    return stats


def smoothed_ranges(model, stats: GraphStats, suffix: str = "_smoothed") -> dict[str, float]:
    """Tensor -> max |x| of a graph :func:`.smooth.smooth` made from the observed one: the
    observed tensors, plus each inserted ``Mul``'s output (``x * inv_scale``), whose maximum
    is ``max_k channel_max_k * inv_scale_k``."""
    from onnx import numpy_helper

    ranges = dict(stats.absmax)
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Mul" or not node.output[0].endswith(suffix):
            continue
        activation = node.input[0]
        if activation not in stats.channel_max or node.input[1] not in inits:
            continue
        inv = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        ranges[node.output[0]] = float((stats.channel_max[activation] * inv).max(initial=0.0))
    return ranges


def write_range_cache(path: Path, ranges: Mapping[str, float]) -> None:
    """``ranges`` (tensor -> max |x|) as ONNX Runtime's MinMax calibration cache, symmetric
    (``CalibTensorRangeSymmetric``): ``quantize_static(calibration_cache_path=path)`` then
    quantizes with them and runs no calibration."""
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        TensorData,
        TensorsData,
        save_tensors_data,
    )

    data = {
        name: TensorData(lowest=np.array([-peak], np.float32), highest=np.array([peak], np.float32))
        for name, peak in ranges.items()
    }
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), Path(path))
