"""FP32 graph -> INT8 graph with explicit Q/DQ nodes, configured so TensorRT takes it.

ONNX Runtime's ``quantize_static`` in QDQ format with: signed INT8 activations and weights,
symmetric scales (every zero point 0), per-channel weights (output-channel axis), only
MatMul/Gemm/Conv quantized (quantizing Add/LayerNorm/Softmax too wrecks the ViT embedding),
biases left FP32 (TensorRT does not take INT32 bias dequantisation), dedicated Q/DQ pairs
per consumer, named nodes excludable.

Calibration streams (image, expression) pairs one at a time through the shared
preprocessing and tokenizer; each graph sees what the FP32 graphs upstream of it produce.
For MinMax (the default) :mod:`.int8_prepare` has already written the ranges into the cache
file (one FP32 pass per layout, :mod:`.calibration_pass`), so ``quantize_static`` reads them
and calibrates nothing. Entropy and percentile calibrate here: ``CalibStridedMinMax`` = 1
makes ONNX Runtime fold every sample into its histograms at once. The ranges are cached in a
JSON file (``calibration_cache_path``) keyed by graph, data and method.

The graph given here is usually already smoothed (:mod:`.smooth`, ``Int8Options.smooth``):
activation outlier channels moved into the per-channel weights before the ranges are taken.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, ConfigError
from ..runtime.graph_chain import GraphChain, layout_of
from .chain import PairInputs
from .samples import PairSource
from .smooth import DEFAULT_ALPHA

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_OP_TYPES: tuple[str, ...] = ("MatMul", "Gemm", "Conv")
# weight bits -> the largest |quantized weight|. x86 CPUs without VNNI multiply INT8 with
# ``vpmaddubsw`` (u8 x s8, each adjacent pair of products summed into a saturating int16);
# ONNX Runtime and oneDNN run signed activations there as u8 = s8 + 128, so 8-bit weights
# (255 * 127 * 2 = 64770 > 32767) saturate and 7-bit weights (255 * 64 * 2 = 32640) cannot.
# What cannot overflow is a pair whose |w_2k| + |w_2k+1| <= 128 (255 * 128 = 32640): the
# "7" scheme bounds each adjacent pair along K of every MatMul/Gemm/Conv weight so (see
# bound_weight_pairs), which leaves most weights nearly 8 bits of range.
WEIGHT_BITS = {8: 127, 7: 64}
PAIR_BUDGET = 127  # per-pair scale: rounding adds at most 1, so |c_2k| + |c_2k+1| <= 128
DEFAULT_WEIGHT_BITS = 7  # one graph whose INT8 numerics are the same on every x86 CPU


@dataclass(frozen=True)
class Int8Options:
    """How to quantize: calibration method, op types, excluded nodes."""

    method: str = "minmax"
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    exclude: tuple[str, ...] = ()
    per_channel: bool = True
    percentile: float = 99.999
    # SmoothQuant migration strength (.smooth), None: the activations are quantized as they are
    smooth: float | None = DEFAULT_ALPHA
    # 7: weights in [-64, 64], so no pair of INT8 products overflows the 16-bit sums of x86
    # CPUs without VNNI (see WEIGHT_BITS); 8: the full [-127, 127]
    weight_bits: int = DEFAULT_WEIGHT_BITS

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ConfigError(
                f"unknown calibration method {self.method!r}; choose one of {CALIBRATION_METHODS}"
            )
        if self.smooth is not None and not 0.0 <= self.smooth <= 1.0:
            raise ConfigError(f"smoothing strength {self.smooth}: a number in [0, 1]")
        if self.weight_bits not in WEIGHT_BITS:
            raise ConfigError(
                f"weight bits {self.weight_bits!r}: choose one of {sorted(WEIGHT_BITS)}"
            )

    @property
    def weight_levels(self) -> int:
        """The largest |quantized weight| (127 for 8 bits, 64 for 7)."""
        return WEIGHT_BITS[self.weight_bits]

    def extra_options(self) -> dict[str, object]:
        """``quantize_static`` extra options (see the module docstring for why each)."""
        extra: dict[str, object] = {
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,
            "DedicatedQDQPair": True,
            "CalibTensorRangeSymmetric": True,
            "CalibStridedMinMax": 1,
            # Q/DQ on the inputs of quantized ops only (TensorRT's placement): no output Q/DQ
            "OpTypesToExcludeOutputQuantization": list(self.op_types),
        }
        if self.method == "percentile":
            extra["CalibPercentile"] = self.percentile
        return extra


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dit_deploy" / "calibration"


def cache_file(
    cache_dir: Path, role: str, graph_sha256: str, source: PairSource, options: Int8Options
) -> Path:
    """The range cache for one graph: its name changes with anything that changes the ranges."""
    key = json.dumps(
        {
            "graph": graph_sha256,
            "data": source.key(),
            "method": options.method,
            "percentile": options.percentile if options.method == "percentile" else None,
            "op_types": sorted(options.op_types),
            "per_channel": options.per_channel,
            "smooth": options.smooth,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{role}.{options.method}.{digest}.json"


class StreamingCalibrationReader:
    """ONNX Runtime ``CalibrationDataReader`` over a :class:`PairSource`, one pair at a time.

    ``set_range(start, end)`` (called by ``CalibStridedMinMax``) moves along the stream; a
    progress callback is told about every sample.
    """

    def __init__(
        self,
        source: PairSource,
        role: str,
        prepare: PairInputs,
        fp32: dict[str, GraphChain],
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.source = source
        self.role = role
        self.prepare = prepare
        self.fp32 = fp32
        self.progress = progress
        self._length = len(source)
        self._iter: Iterator | None = None
        self._position = 0
        self._end = self._length

    def __len__(self) -> int:
        return self._length

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def set_range(self, start_index: int, end_index: int) -> None:
        if self._iter is None or start_index < self._position:
            self._iter, self._position = iter(self.source), 0
        while self._position < start_index:
            next(self._iter)
            self._position += 1
        self._end = min(end_index, self._length)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iter is None:
            self._iter, self._position = iter(self.source), 0
        if self._position >= self._end:
            return None
        pair = next(self._iter, None)
        if pair is None:
            return None
        self._position += 1
        feeds, _ = self.prepare([pair])
        inputs = self.fp32[layout_of(self.role)].role_inputs(self.role, feeds)
        if self.progress:
            self.progress(1)
        return inputs


@dataclass
class Int8Result:
    role: str
    cache: Path
    cache_hit: bool
    quantized_nodes: int = 0
    excluded: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _quantization_api():
    try:
        from onnxruntime import quantization as q
    except ImportError as exc:
        raise BackendUnavailableError(
            "INT8 quantization needs onnxruntime: pip install 'dit-deploy[export]'"
        ) from exc
    if "calibration_cache_path" not in inspect.signature(q.quantize_static).parameters:
        import onnxruntime

        raise BackendUnavailableError(
            f"onnxruntime {onnxruntime.__version__} has no calibration cache in quantize_static; "
            "pip install -U 'onnxruntime>=1.32' (pip install 'dit-deploy[export]')"
        )
    return q


def quantize_int8(
    graph: Path,
    out: Path,
    role: str,
    reader: StreamingCalibrationReader,
    cache: Path,
    options: Int8Options,
) -> Int8Result:
    """Calibrate ``graph`` on ``reader`` (or reuse ``cache``) and write the Q/DQ graph ``out``."""
    q = _quantization_api()
    method = {
        "minmax": q.CalibrationMethod.MinMax,
        "entropy": q.CalibrationMethod.Entropy,
        "percentile": q.CalibrationMethod.Percentile,
    }[options.method]
    hit = cache.is_file()
    cache.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_root_logger():  # "consider pre-processing": our graphs are shape-inferred
        q.quantize_static(
            str(graph),
            str(out),
            calibration_data_reader=None if hit else reader,
            quant_format=q.QuantFormat.QDQ,
            op_types_to_quantize=list(options.op_types),
            per_channel=options.per_channel,
            reduce_range=False,  # 7: the codes are rewritten below (bound_weight_pairs)
            activation_type=q.QuantType.QInt8,
            weight_type=q.QuantType.QInt8,
            nodes_to_exclude=list(options.exclude),
            calibrate_method=method,
            extra_options=options.extra_options(),
            calibration_cache_path=str(cache),
        )
    import onnx

    model = onnx.load(str(out))
    restore_float_inputs(model, options.op_types, options.exclude)
    if options.weight_bits == 7:
        bound_weight_pairs(model, onnx.load(str(graph)))
    widen_activation_operands(model, options.weight_levels)
    onnx.save(model, str(out))
    quantized = sum(node.op_type == "DequantizeLinear" for node in model.graph.node)
    return Int8Result(role, cache, hit, quantized, list(options.exclude))


def batched_constant_matmuls(model) -> list[str]:
    """MatMuls whose constant second operand has batch dimensions (rank > 2; the relative
    position tables of DIT's attention). INT8 and FP16 keep them FP32: ONNX Runtime's
    per-channel INT8 weights are for (K, N) matrices only (MatMulIntegerToFloat rejects the
    zero points otherwise), and these small matmuls (0.4% of the bundled model's MatMul
    FLOPs) add the position bias straight to attention's logits, where FP16 rounding moved
    a random model's masks below FP16's 0.999 gate."""
    ranks = {t.name: len(t.dims) for t in model.graph.initializer}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and len(n.input) > 1 and ranks.get(n.input[1], 2) > 2
    ]


def decoder_attention_matmuls(model, role: str) -> list[str]:
    """The mask decoder's activation x activation MatMuls (its attention between the prompt
    tokens and the image, and the final hypernetwork x upscaled-embedding product that *is*
    the mask logits): every such MatMul of the ``mask_decoder`` graph, and of the fused
    graph the ones under its decoder (``layout_alias.FUSED_PREFIX``). INT8 keeps them FP32:
    a few prompt tokens make them a negligible share of the FLOPs at any image size, while
    their INT8 error lands in the logits. On the bundled model plain INT8 agrees with FP32 at
    0.960-0.962 with them quantized and 0.980-0.982 without (the final product alone: 0.972-
    0.975; the image encoder's attention kept FP32 instead: 0.961-0.965, at +43% OpenVINO
    latency at ViT-B; docs/benchmarks.md, "INT8 per ISA")."""
    from .layout_alias import FUSED, FUSED_PREFIX

    decoder = "mask_decoder"
    if role not in (decoder, FUSED):
        return []
    prefix = FUSED_PREFIX[decoder] + "/" if role == FUSED else ""
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul"
        and n.name.startswith(prefix)
        and len(n.input) > 1
        and not constants & {n.input[0], n.input[1]}
    ]


def restore_float_inputs(model, op_types: Sequence[str], exclude: Sequence[str] = ()) -> int:
    """Give every op that is not quantized its FP32 input back.

    When a tensor has one quantized consumer, ``quantize_static`` routes *all* its consumers
    through the Dequantize (a residual Add would then add a quantized copy, an excluded
    MatMul would read INT8 anyway). Here those other consumers read the original tensor
    again, so only quantized ``op_types`` nodes see Q/DQ: the placement TensorRT fuses.
    Returns the number of inputs restored.
    """
    excluded = set(exclude)
    nodes = model.graph.node
    producer = {out: n for n in nodes for out in n.output}
    source = {}  # DQ output -> the float tensor its Q quantized
    for node in nodes:
        if node.op_type == "DequantizeLinear":
            q = producer.get(node.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                source[node.output[0]] = q.input[0]
    outputs = {o.name for o in model.graph.output}
    restored = 0
    for node in nodes:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.op_type in op_types and node.name not in excluded:
            continue
        for i, name in enumerate(node.input):
            if name in source and name not in outputs:
                node.input[i] = source[name]
                restored += 1
    used = {name for n in nodes for name in n.input} | outputs
    dead = [n for n in nodes if n.op_type == "DequantizeLinear" and n.output[0] not in used]
    for dq in dead:
        nodes.remove(dq)
    used = {name for n in nodes for name in n.input} | outputs
    for q in [n for n in nodes if n.op_type == "QuantizeLinear" and n.output[0] not in used]:
        nodes.remove(q)
    return restored


def pair_bounded_codes(w: np.ndarray, k_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """INT8 codes and per-output-channel scales of a 2-D weight such that no two weights
    adjacent along K (``k`` even and ``k + 1``: the pair ``vpmaddubsw`` sums) have
    |codes| summing past 128; never coarser than 7 bits. Returns (codes int8 like ``w``,
    scales (N,) float32)."""
    wk = np.moveaxis(np.asarray(w, np.float64), k_axis, 0)  # (K, N)
    scale = _pair_scale([wk])
    codes = np.clip(np.round(wk / scale), -127, 127).astype(np.int8)
    return np.moveaxis(codes, 0, k_axis), scale


def conv_pair_bounded_codes(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pair_bounded_codes` of a Conv weight (N, C, kh, kw), per output channel, with
    pairs taken in both orders the CPU kernels flatten K in: (C, kh, kw) (ONNX Runtime's
    NCHW im2col) and (kh, kw, C) (its NHWC kernels and oneDNN's channel-innermost blocks)."""
    w = np.asarray(w, np.float64)
    n = w.shape[0]
    orders = [w.reshape(n, -1).T, np.moveaxis(w, 1, -1).reshape(n, -1).T]
    scale = _pair_scale(orders)
    codes = np.clip(np.round(w / scale.reshape(-1, *[1] * (w.ndim - 1))), -127, 127)
    return codes.astype(np.int8), scale


def _pair_scale(orders: list[np.ndarray]) -> np.ndarray:
    """Per-channel scale (N,) that keeps |round(w_2k / s)| + |round(w_2k+1 / s)| <= 128 in
    every (K, N) ``orders`` of one weight, and at most 7 bits' step."""
    peak = np.abs(orders[0]).max(axis=0)
    pair_peak = np.zeros_like(peak)
    for wk in orders:
        magnitude = np.abs(wk)
        if len(magnitude) % 2:
            magnitude = np.concatenate([magnitude, np.zeros_like(magnitude[:1])])
        pairs = magnitude.reshape(-1, 2, magnitude.shape[1]).sum(axis=1)  # (K/2, N)
        pair_peak = np.maximum(pair_peak, pairs.max(axis=0))
    return np.maximum(np.minimum(pair_peak / PAIR_BUDGET, peak / 64.0), 1e-12).astype(np.float32)


def _seven_bit_codes(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 7-bit codes (+-64) and scales per channel along ``axis``."""
    others = tuple(i for i in range(w.ndim) if i != axis)
    scale = np.maximum(np.abs(w).max(axis=others) / 64.0, 1e-12).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    codes = np.clip(np.round(w / scale.reshape(shape)), -64, 64).astype(np.int8)
    return codes, scale


def bound_weight_pairs(model, source) -> int:
    """Rewrite the INT8 codes of every constant weight of ``model`` (quantized from ``source``,
    its FP32 graph) so that no pair of products overflows ``vpmaddubsw``'s int16 on CPUs
    without VNNI: MatMul/Gemm weights with :func:`pair_bounded_codes` (on the bundled model
    a median of 78 levels instead of 64), Conv weights with :func:`conv_pair_bounded_codes`,
    any other with 7 bits. Returns the number of weights rewritten."""
    from onnx import numpy_helper

    floats = {t.name: t for t in source.graph.initializer}
    inits = {t.name: t for t in model.graph.initializer}
    users: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    done = 0
    for dq in [n for n in model.graph.node if n.op_type == "DequantizeLinear"]:
        codes_name, scale_name = dq.input[0], dq.input[1]
        original = codes_name.removesuffix("_quantized")
        if codes_name not in inits or original not in floats or scale_name not in inits:
            continue
        w = numpy_helper.to_array(floats[original])
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        consumers = users.get(dq.output[0], [])
        k_axis = _k_axis(consumers, w, axis)
        if k_axis is not None:
            codes, scale = pair_bounded_codes(w, k_axis)
        elif w.ndim == 4 and axis == 0 and all(n.op_type == "Conv" for n in consumers):
            codes, scale = conv_pair_bounded_codes(w)
        else:
            codes, scale = _seven_bit_codes(w, axis % w.ndim) if w.ndim > 1 else (None, None)
        if codes is None:
            continue
        old_scale = numpy_helper.to_array(inits[scale_name])
        inits[codes_name].CopyFrom(numpy_helper.from_array(codes, codes_name))
        inits[scale_name].CopyFrom(
            numpy_helper.from_array(scale.reshape(old_scale.shape).astype(old_scale.dtype),
                                    scale_name)
        )  # fmt: skip
        done += 1
    return done


def _k_axis(consumers, w: np.ndarray, channel_axis: int) -> int | None:
    """The K axis of a 2-D weight read (as input 1) only by MatMul/Gemm nodes, with its
    per-channel scales on the other axis; None otherwise."""
    if w.ndim != 2 or not consumers:
        return None
    axes = set()
    for node in consumers:
        if node.op_type == "MatMul":
            axes.add(0)
        elif node.op_type == "Gemm":
            axes.add(1 if any(a.name == "transB" and a.i for a in node.attribute) else 0)
        else:
            return None
    if len(axes) != 1:
        return None
    (k_axis,) = axes
    return k_axis if channel_axis % 2 != k_axis else None


def widen_activation_operands(model, levels: int) -> int:
    """Give the second operand of every activation x activation MatMul (attention's K and V)
    the weights' range: its Q/DQ scale is widened by ``127 / levels``, so its INT8 values stay
    within +-``levels``. CPU kernels put that operand where the weights go (oneDNN under
    OpenVINO does; ONNX Runtime does not need it), and :func:`bound_weight_pairs` only
    bounds constant weights. Returns the number of scales widened."""
    from onnx import numpy_helper

    if levels >= 127:
        return 0
    inits = {t.name: t for t in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    widened: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2:
            continue
        dq = producer.get(node.input[1])
        q = (
            producer.get(dq.input[0])
            if dq is not None and dq.op_type == "DequantizeLinear"
            else None
        )
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] in inits:
            continue
        for name in {q.input[1], dq.input[1]} - widened:
            scale = numpy_helper.to_array(inits[name])
            wider = (scale.astype(np.float64) * (127.0 / levels)).astype(scale.dtype)
            inits[name].CopyFrom(numpy_helper.from_array(wider, name))
            widened.add(name)
    return len(widened)


def unknown_nodes(graph_nodes: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """Names in ``exclude`` that are not nodes of the graph (typos are caught, not ignored)."""
    names = set(graph_nodes)
    return [n for n in exclude if n not in names]
