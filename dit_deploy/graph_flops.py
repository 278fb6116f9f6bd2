"""FLOPs of a graph's matrix products, node by node, from shapes alone (torch-free).

Every shape comes from ONNX Runtime's symbolic shape inference (it follows the
Shape/Reshape arithmetic that ONNX's own inference leaves unknown), run on a skeleton of
the graph whose large product weights carry no data: counting a ViT-B graph runs nothing
and copies none of its weights. Used by the bench's compute floors and by the INT8 search
(what each node costs, what share of the FLOPs stays INT8).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ArtifactError

PRODUCTS = ("MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "Conv", "ConvTranspose")
_KEEP_DATA_UP_TO = 4096  # elements: smaller weights keep their data


def node_flops(model, batch: int = 1) -> dict[str, int]:
    """Node name -> FLOPs (2 x multiply-adds) of each MatMul/Gemm/Conv/ConvTranspose node of
    ``model`` (a ``ModelProto``) at ``batch``; 0 where a shape stays unknown."""
    return {node.name: flops for node, flops in _products(model, batch)}


def _products(model, batch: int) -> list[tuple[object, int]]:
    """(node, FLOPs) of every product node, named or not."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    skeleton = _skeleton(model)
    for value in skeleton.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    inferred = SymbolicShapeInference.infer_shapes(skeleton, auto_merge=True)
    shapes = {v.name: _dims(v) for v in (*inferred.graph.value_info, *inferred.graph.input,
                                         *inferred.graph.output)}  # fmt: skip
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    return [(n, 2 * _node_macs(n, shapes)) for n in inferred.graph.node if n.op_type in PRODUCTS]


def graph_gflop(path: Path, batch: int) -> float:
    """GFLOP of a graph file's products at ``batch`` (:func:`node_flops`); typed error if a
    product's shape stays unknown."""
    import onnx

    products = _products(onnx.load(str(path), load_external_data=False), batch)
    unknown = [node.name or node.op_type for node, flops in products if not flops]
    if unknown:
        raise ArtifactError(f"{path.name}: no shape for {unknown[:3]}; cannot count its FLOPs")
    return sum(flops for _, flops in products) / 1e9


def _skeleton(model):
    """A new model with ``model``'s graph, the large weights only products read without
    their data (dims and type kept; the inference computes on other constants' values)."""
    from onnx import ModelProto, TensorProto

    others = {name for n in model.graph.node if n.op_type not in PRODUCTS for name in n.input}

    out = ModelProto()
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    graph = out.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    for init in model.graph.initializer:
        if int(np.prod(init.dims)) > _KEEP_DATA_UP_TO and init.name not in others:
            init = TensorProto(name=init.name, dims=init.dims, data_type=init.data_type)
        graph.initializer.append(init)
    return out


def _dims(value) -> list[int] | None:
    dims = value.type.tensor_type.shape.dim
    out = [d.dim_value for d in dims]
    return out if all(v > 0 for v in out) else None


def _node_macs(node, shapes: dict[str, list[int] | None]) -> int:
    """Multiply-adds of one node (0 for other ops or unknown shapes)."""
    out = shapes.get(node.output[0]) if node.output else None
    if node.op_type in ("MatMul", "Gemm", "MatMulInteger", "QLinearMatMul"):
        a = shapes.get(node.input[0])
        if not out or not a:
            return 0
        k = a[-2] if node.op_type == "Gemm" and _attr(node, "transA", 0) else a[-1]
        return int(np.prod(out)) * k
    if node.op_type == "Conv":
        w = shapes.get(node.input[1])
        if not out or not w:
            return 0
        return int(np.prod(out)) * int(np.prod(w[1:]))
    if node.op_type == "ConvTranspose":
        x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
        if not x or not w:
            return 0
        return int(np.prod(x)) * int(np.prod(w[1:]))
    return 0


def _attr(node, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)
