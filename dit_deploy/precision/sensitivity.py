"""Every quantized node's INT8 error alone, from one session per graph.

The INT8 search needs, per quantized node, the layout's logits error with only that node
quantized. Writing and opening one graph per node (the Q/DQ pairs of all other nodes
removed) cost about 5 s a node at ViT-B, 2 s of them saving the graph and opening a session.
Here the quantized graph is opened once with a gate per node: each input the node reads
through a ``DequantizeLinear`` becomes ``x + g * (DQ(Q(x)) - x)``, ``g`` a scalar graph input,
so ``g = 1`` is the node quantized exactly as in the INT8 graph and ``g = 0`` its FP32 input
(what :func:`.auto.without_qdq` restores). Setting one gate at a time measures each node
alone; the quantized product is computed in FP32 on the dequantized values, which equals
the integer kernels' result up to float rounding.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import numpy as np

GATE = "sensitivity_gate:"  # + node name: the gate input of that node


def gated_graph(qmodel, fp32_model, nodes: Sequence[str]):
    """A copy of ``qmodel`` with a scalar FP32 input ``GATE + name`` per node of ``nodes``
    choosing between its quantized (1) and FP32 (0) inputs (module docstring)."""
    from onnx import TensorProto, helper

    model = copy.deepcopy(qmodel)
    graph = model.graph
    wanted = set(nodes)
    producer = {o: n for n in graph.node for o in n.output}
    originals = {n.name: n for n in fp32_model.graph.node}
    weights = {t.name: t for t in fp32_model.graph.initializer}
    present = {t.name for t in graph.initializer}
    order = []
    for node in graph.node:
        if node.name in wanted:
            gate = GATE + node.name
            graph.input.append(helper.make_tensor_value_info(gate, TensorProto.FLOAT, []))
            for i, name in enumerate(node.input):
                dq = producer.get(name)
                if dq is None or dq.op_type != "DequantizeLinear":
                    continue
                original = originals[node.name].input[i]
                if original in weights and original not in present:
                    graph.initializer.append(weights[original])
                    present.add(original)
                stem = f"{gate}/{i}"
                order += [
                    helper.make_node("Sub", [name, original], [f"{stem}/delta"]),
                    helper.make_node("Mul", [f"{stem}/delta", gate], [f"{stem}/gated"]),
                    helper.make_node("Add", [original, f"{stem}/gated"], [f"{stem}/input"]),
                ]
                node.input[i] = f"{stem}/input"
        order.append(node)
    del graph.node[:]
    graph.node.extend(order)
    return model


class GatedGraph:
    """One ONNX Runtime session over :func:`gated_graph`; :meth:`runner` gives the graph's
    outputs with exactly one node quantized."""

    def __init__(self, qmodel, fp32_model, nodes: Sequence[str], threads: int | None = None):
        import onnxruntime as ort

        self.nodes = list(nodes)
        model = gated_graph(qmodel, fp32_model, self.nodes)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = [i.name for i in self._session.get_inputs() if not i.name.startswith(GATE)]
        self._outputs = [o.name for o in qmodel.graph.output]

    def runner(self, quantized: str | None) -> Callable[[Mapping[str, np.ndarray]], dict]:
        """values -> the graph's outputs with only ``quantized`` (None: no node) quantized."""
        gates = {GATE + n: np.array(n == quantized, np.float32) for n in self.nodes}

        def run(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            feeds = {n: values[n] for n in self._inputs} | gates
            return dict(zip(self._outputs, self._session.run(self._outputs, feeds), strict=True))

        return run

    def close(self) -> None:
        self._session = None
