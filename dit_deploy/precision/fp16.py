"""FP32 graph -> FP16 graph with FP32 islands, by onnxconverter-common's maintained converter.

Islands (ops kept in FP32, with Casts around them) where FP16 overflows or loses the mask:
LayerNormalization and the hand-written LayerNorm2d of SAM's neck (ReduceMean, Pow, Sqrt),
Softmax, and the converter's own list of ops ONNX Runtime has no FP16 kernel for. Inputs and
outputs stay FP32 (``keep_io_types``), so runtimes feed and read every precision alike.
Which islands matter was measured (see ``docs/benchmarks.md``, "Precision").
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

from ..errors import BackendUnavailableError

# kept FP32 by default; extend with --fp32-ops / --fp32-nodes
DEFAULT_FP32_OPS: tuple[str, ...] = ("LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt")
_FLOAT = 1  # onnx.TensorProto.FLOAT


def _converter():
    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise BackendUnavailableError(
            "FP16 conversion needs onnxconverter-common: pip install 'dit-deploy[export]'"
        ) from exc
    return float16


def convert_fp16(
    model,
    fp32_ops: Iterable[str] = DEFAULT_FP32_OPS,
    fp32_nodes: Iterable[str] = (),
):
    """Return an FP16 copy of ``model`` (onnx.ModelProto); inputs/outputs stay FP32.

    Args:
        model: the FP32 graph.
        fp32_ops: op types kept in FP32 (in addition to the converter's defaults).
        fp32_nodes: node names kept in FP32 (e.g. the first/last node, if measured to need it).
    """
    import copy

    float16 = _converter()
    model = copy.deepcopy(model)
    # the exporter leaves duplicate value_info entries; the converter retypes one copy and
    # not the other. Its own shape inference recomputes them all.
    del model.graph.value_info[:]
    blocked = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(fp32_ops))
    nodes = set(fp32_nodes) | set(_casts_to_float(model))
    _unshare_constants(model, {n.name for n in model.graph.node if n.op_type in blocked} | nodes)
    float_outputs = {o.name for o in model.graph.output if o.type.tensor_type.elem_type == _FLOAT}
    with warnings.catch_warnings():  # "-10000.0 will be truncated": clamping is intended
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=blocked,
            node_block_list=sorted(nodes),
        )
    _keep_outputs_float(converted, float_outputs)
    return converted


def _unshare_constants(model, fp32_nodes: set[str]) -> int:
    """Give FP32 nodes their own copy of constants they share with FP16 nodes.

    The converter types an initializer once: shared by a node kept FP32 and a converted
    one, it ends FP16 for both and ONNX Runtime refuses the FP32 node ("bound to different
    types"). Returns the number of copies made.
    """
    inits = {t.name: t for t in model.graph.initializer}
    users: dict[str, set[bool]] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in inits:
                users.setdefault(name, set()).add(node.name in fp32_nodes)
    shared = {name for name, kinds in users.items() if kinds == {True, False}}
    for name in sorted(shared):
        copy = type(inits[name])()
        copy.CopyFrom(inits[name])
        copy.name = name + "_fp32"
        model.graph.initializer.append(copy)
    for node in model.graph.node:
        if node.name in fp32_nodes:
            node.input[:] = [i + "_fp32" if i in shared else i for i in node.input]
    return len(shared)


def _keep_outputs_float(model, names: set[str]) -> None:
    """Make FP32 outputs FP32 again where the converter left them FP16.

    With ``keep_io_types`` the converter still types an output FP16 when its producer is a
    blocked (FP32) node: it puts its "back to FP16" Cast in front of the output. That Cast
    is turned into a no-op Cast to FP32 (or, for any other producer, a Cast is appended).
    """
    from onnx import TensorProto, helper

    consumers = {name for node in model.graph.node for name in node.input}
    for output in model.graph.output:
        if output.name not in names or output.type.tensor_type.elem_type == _FLOAT:
            continue
        producer = next(n for n in model.graph.node if output.name in n.output)
        is_cast16 = producer.op_type == "Cast" and any(
            a.name == "to" and a.i == TensorProto.FLOAT16 for a in producer.attribute
        )
        if is_cast16 and output.name not in consumers:
            for attr in producer.attribute:
                if attr.name == "to":
                    attr.i = _FLOAT
        else:
            inner = output.name + "_fp16"
            for node in model.graph.node:
                node.output[:] = [inner if o == output.name else o for o in node.output]
                node.input[:] = [inner if i == output.name else i for i in node.input]
            model.graph.node.append(
                helper.make_node("Cast", [inner], [output.name], to=_FLOAT, name=inner + "_cast")
            )
        output.type.tensor_type.elem_type = _FLOAT
    for info in list(model.graph.value_info):
        if info.name in names:
            model.graph.value_info.remove(info)


def _casts_to_float(model) -> list[str]:
    """Names of the graph's own ``Cast(to=FLOAT)`` nodes (e.g. the int attention mask).

    The converter retypes their outputs to FP16 but leaves ``to=FLOAT``, which ONNX Runtime
    rejects; blocked by name they keep an FP32 output and get a Cast to FP16 after them.
    (Blocking the op type ``Cast`` instead makes the converter loop on its own new Casts.)
    """
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "Cast" and any(a.name == "to" and a.i == _FLOAT for a in node.attribute)
    ]
