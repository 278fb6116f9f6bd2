"""Every float tensor of one graph, observed on real inputs: largest magnitude and shape.

The graph is run in ONNX Runtime (CPU) with its intermediate tensors made graph outputs, a
group at a time so that only one group of activations is alive at once (ViT-B activations
are tens of MB each). Used by the FP16 repair (which tensors leave the FP16 range; how far
the FP16 graph drifts from FP32 at each tensor, :func:`relative_errors`) and by the INT8
search (the activation shapes that give each MatMul/Conv its FLOPs).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

FP16_MAX = 65504.0
_FLOAT_TYPES = (1, 10)  # onnx.TensorProto.FLOAT, FLOAT16


@dataclass
class TensorStat:
    """What one tensor held over the observed inputs (``shape`` of the first input seen)."""

    max_abs: float
    shape: tuple[int, ...]


def float_tensors(model) -> dict[str, int]:
    """Name -> element type of every FP32/FP16 tensor a node produces (shape-inferred)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*inferred.graph.value_info, *inferred.graph.output]
    }
    produced = [o for n in model.graph.node for o in n.output if o]
    return {name: types[name] for name in produced if types.get(name) in _FLOAT_TYPES}


def _session(model, names: Sequence[str], types: Mapping[str, int], threads: int | None):
    import onnxruntime as ort
    from onnx import helper

    probe = copy.deepcopy(model)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(helper.make_tensor_value_info(name, types[name], None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # no fusion: a fused node would hide the tensors asked for
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def observe(
    model,
    feeds: Iterable[Mapping[str, np.ndarray]],
    names: Sequence[str] | None = None,
    group: int = 64,
    threads: int | None = None,
) -> dict[str, TensorStat]:
    """Observe ``names`` (default: every float tensor) of ``model`` over ``feeds``."""
    feeds = list(feeds)
    types = float_tensors(model)
    names = [n for n in (names if names is not None else types) if n in types]
    stats: dict[str, TensorStat] = {}
    inputs = {i.name for i in model.graph.input}
    for start in range(0, len(names), group):
        chunk = names[start : start + group]
        session = _session(model, chunk, types, threads)
        for feed in feeds:
            values = session.run(chunk, {k: v for k, v in feed.items() if k in inputs})
            for name, value in zip(chunk, values, strict=True):
                value = np.asarray(value)
                finite = np.abs(value[np.isfinite(value)]) if value.size else value
                peak = float(finite.max()) if finite.size else 0.0
                if not np.isfinite(value).all():
                    peak = float("inf")
                stat = stats.get(name)
                if stat is None:
                    stats[name] = TensorStat(peak, tuple(value.shape))
                else:
                    stat.max_abs = max(stat.max_abs, peak)
        del session
    return stats


def relative_errors(
    reference,
    candidate,
    feeds: Iterable[Mapping[str, np.ndarray]],
    names: Sequence[str],
    group: int = 128,
    threads: int | None = None,
) -> dict[str, float]:
    """Name -> sum |candidate - reference| / sum |reference| over ``feeds`` for each tensor
    of ``names`` both graphs compute (inf where the candidate is not finite).

    Both graphs run a group of tensors at a time and only the sums are kept, so memory is
    one group's activations per graph, whatever the number of feeds.
    """
    feeds = list(feeds)
    ref_types, new_types = float_tensors(reference), float_tensors(candidate)
    names = [n for n in names if n in ref_types and n in new_types]
    inputs_ref = {i.name for i in reference.graph.input}
    inputs_new = {i.name for i in candidate.graph.input}
    errors: dict[str, float] = {}
    for start in range(0, len(names), group):
        chunk = names[start : start + group]
        ref_session = _session(reference, chunk, ref_types, threads)
        new_session = _session(candidate, chunk, new_types, threads)
        num = dict.fromkeys(chunk, 0.0)
        den = dict.fromkeys(chunk, 0.0)
        for feed in feeds:
            ref = ref_session.run(chunk, {k: v for k, v in feed.items() if k in inputs_ref})
            new = new_session.run(chunk, {k: v for k, v in feed.items() if k in inputs_new})
            for name, a, b in zip(chunk, ref, new, strict=True):
                a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
                if a.shape != b.shape:
                    num[name] = float("nan")
                    continue
                num[name] += float(np.abs(a - b).sum()) if np.isfinite(b).all() else np.inf
                den[name] += float(np.abs(a).sum())
        for name in chunk:
            if np.isnan(num[name]):
                continue
            errors[name] = num[name] / den[name] if den[name] else 0.0
        del ref_session, new_session
    return errors
