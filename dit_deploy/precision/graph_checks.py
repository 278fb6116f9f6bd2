"""Structural checks of FP16/INT8 graphs: what TensorRT (strongly typed) will be given.

Each check returns a list of problems (empty = fine), so a caller can report them all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from onnx import ModelProto, TensorProto, numpy_helper

# the weight input's output-channel axis TensorRT expects for per-channel scales
_WEIGHT_AXIS = {"Conv": 0, "MatMul": 1}


def _initializers(model: ModelProto) -> dict[str, object]:
    return {t.name: t for t in model.graph.initializer}


def _attr(node, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def int8_problems(model: ModelProto) -> list[str]:
    """Problems that would stop TensorRT from taking ``model`` as explicit INT8 (or make it
    slow): non-INT8 or non-zero zero points, INT32 bias dequantisation, per-tensor weights,
    per-channel scales on the wrong axis; and no Q/DQ at all."""
    problems: list[str] = []
    inits = _initializers(model)
    nodes = model.graph.node
    ops = Counter(n.op_type for n in nodes)
    if not ops["QuantizeLinear"] or not ops["DequantizeLinear"]:
        problems.append("no QuantizeLinear/DequantizeLinear nodes: the graph is not quantized")
    consumers: dict[str, list] = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    for node in nodes:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(node.input) < 3 or node.input[2] not in inits:
            problems.append(f"{node.name}: no constant zero point (TensorRT needs one, = 0)")
            continue
        zp = inits[node.input[2]]
        if zp.data_type != TensorProto.INT8:
            problems.append(
                f"{node.name}: zero point type {TensorProto.DataType.Name(zp.data_type)}, not INT8"
            )
        if numpy_helper.to_array(zp).any():
            problems.append(f"{node.name}: non-zero zero point (asymmetric); TensorRT needs 0")
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        weight = inits[node.input[0]]
        if weight.data_type == TensorProto.INT32:
            problems.append(f"{node.name}: INT32 (bias) dequantisation; quantize without bias")
            continue
        users = consumers.get(node.output[0], [])
        for user in users:
            if user.op_type not in ("Conv", "MatMul", "Gemm") or user.input[1] != node.output[0]:
                continue
            scale = inits.get(node.input[1])
            per_channel = scale is not None and len(scale.dims) == 1 and scale.dims[0] > 1
            if not per_channel:
                problems.append(f"{node.name}: per-tensor weight scale for {user.name}")
                continue
            want = _WEIGHT_AXIS.get(user.op_type)
            if user.op_type == "Gemm":
                want = 0 if _attr(user, "transB", 0) else 1
            if _attr(node, "axis", 1) != want:
                problems.append(
                    f"{node.name}: per-channel axis {_attr(node, 'axis', 1)} for "
                    f"{user.op_type} {user.name}, expected the output-channel axis {want}"
                )
    return problems


def fp16_problems(model: ModelProto, fp32_ops: Iterable[str]) -> list[str]:
    """Problems of an FP16 graph: inputs/outputs not FP32, an island op computing in FP16,
    or no FP16 at all."""
    problems: list[str] = []
    for value in [*model.graph.input, *model.graph.output]:
        elem = value.type.tensor_type.elem_type
        if elem == TensorProto.FLOAT16:
            problems.append(f"graph input/output {value.name} is FP16; keep I/O types FP32")
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in model.graph.input})
    types.update({v.name: v.type.tensor_type.elem_type for v in model.graph.output})
    inits = {t.name: t.data_type for t in model.graph.initializer}
    islands = set(fp32_ops)
    for node in model.graph.node:
        if node.op_type not in islands:
            continue
        name = node.input[0]
        elem = types.get(name, inits.get(name))
        if elem == TensorProto.FLOAT16:
            problems.append(f"{node.op_type} {node.name} computes in FP16; it must stay FP32")
    if TensorProto.FLOAT16 not in set(types.values()) | set(inits.values()):
        problems.append("no FP16 tensor in the graph: the conversion did nothing")
    return problems
