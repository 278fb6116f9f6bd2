"""Every quantized node's INT8 error alone, from one session per graph (INT8 ``--auto``).

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
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..atomic import write_text_atomic
from ..graph_flops import node_flops
from ..runtime.backends import open_backend
from ..runtime.graph_chain import LOGITS, GraphChain, layout_of
from .layout_alias import FUSED, FUSED_PREFIX, fused_twins
from .search_context import Log, SearchContext

GATE = "sensitivity_gate:"  # + node name: the gate input of that node
QDQ = ("QuantizeLinear", "DequantizeLinear")
COMPUTE_OPS = ("MatMul", "Gemm", "Conv")


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


def quantized_nodes(model, op_types: Sequence[str] = COMPUTE_OPS) -> list[str]:
    """Names of the ``op_types`` nodes that read a DequantizeLinear output."""
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return [n.name for n in model.graph.node if n.op_type in op_types and set(n.input) & dq]


def without_qdq(qmodel, fp32_model, nodes: set[str]):
    """A copy of ``qmodel`` where ``nodes`` read the FP32 tensors and weights again (their
    Q/DQ pairs, and the INT8 weights no one reads any more, removed)."""
    model = copy.deepcopy(qmodel)
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    originals = {n.name: n for n in fp32_model.graph.node}
    weights = {t.name: t for t in fp32_model.graph.initializer}
    present = {t.name for t in graph.initializer}
    for node in graph.node:
        if node.name not in nodes:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            original = originals[node.name].input[i]
            node.input[i] = original
            if original in weights and original not in present:
                graph.initializer.append(weights[original])
                present.add(original)
    _prune(graph)
    return model


def _prune(graph) -> None:
    outputs = {o.name for o in graph.output}
    changed = True
    while changed:
        used = {name for n in graph.node for name in n.input} | outputs
        dead = [n for n in graph.node if n.op_type in QDQ and n.output[0] not in used]
        for node in dead:
            graph.node.remove(node)
        changed = bool(dead)
    used = {name for n in graph.node for name in n.input}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class _Errors:
    """Logits mean |error| vs FP32 on the search pairs for variants of one role's graph,
    with every other graph of its layout fixed (upstream outputs computed once)."""

    def __init__(
        self, ctx: SearchContext, role: str, base: Mapping[str, Path], pairs: int | None = None
    ) -> None:
        self.ctx, self.role = ctx, role
        self.layout = layout_of(role)
        self.chain = GraphChain.from_files(self.layout, base, threads=ctx.threads)
        self.upstream, self.reference = [], []
        for chunk in _chunks(list(ctx.search)[:pairs], ctx.eval_batch):
            feeds, _ = ctx.prepare(chunk)
            self.reference.append(ctx.fp32[self.layout].logits(feeds).astype(np.float64))
            self.upstream.append(self.chain.forward(feeds, upto=role))

    def __call__(self, graph: Path) -> float:
        backend = open_backend("onnxruntime", graph, "cpu", self.ctx.threads)
        try:
            names = [s.name for s in backend.inputs]
            return self.error(lambda values: backend.run({n: values[n] for n in names}))
        finally:
            backend.close()

    def error(self, run: Callable[[dict], dict]) -> float:
        """The error with the role's graph computed by ``run`` (values -> its outputs)."""
        roles = self.chain.roles
        later = roles[roles.index(self.role) + 1 :]
        total, count = 0.0, 0
        for values, ref in zip(self.upstream, self.reference, strict=True):
            values = dict(values)
            values.update(run(values))
            for role in later:
                values.update(self.chain.run_role(role, values))
            diff = np.abs(values[LOGITS].astype(np.float64) - ref)
            total += float(diff.sum()) if np.isfinite(diff).all() else float("inf")
            count += diff.size
        return total / max(count, 1)

    def close(self) -> None:
        self.chain.close()


def ranking_pairs(ctx: SearchContext) -> int:
    """How many of the search pairs the sensitivities rank nodes on: the first half (at
    least 2). A ranking needs fewer pairs than a verdict, and every gate of the search is
    evaluated on all of them; at ViT-B this halves the sensitivity pass (4 s a node on 4
    pairs)."""
    return max(2, len(ctx.search) // 2)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def sensitivity(
    ctx: SearchContext,
    role: str,
    qmodel,
    fp32_model,
    base: Mapping[str, Path],
    cache: Path | None,
    log: Log,
) -> tuple[float, dict[str, float]]:
    """The all-INT8 error of ``role``'s layout and, per quantized node, the error with only
    that node quantized (every other Q/DQ pair of the graph removed; the rest of the layout
    FP32), on the first :func:`ranking_pairs` search pairs, cached in ``cache`` by graph and
    search pairs.

    One session for all nodes (:class:`GatedGraph`). Alone, not "all but one": removing one
    Q/DQ pair from the fully quantized graph was measured first and misranks, because
    quantization errors cancel between nodes (on the tiny model a node whose removal made
    the all-INT8 error worse carried most of the error left at the end of the search)."""
    if cache is not None and cache.is_file():
        data = json.loads(cache.read_text())
        return float(data["baseline"]), {k: float(v) for k, v in data["errors"].items()}
    measure = _Errors(ctx, role, {**ctx.sources, role: base[role]}, ranking_pairs(ctx))
    gated = None
    try:
        baseline = measure(base[role])
        errors: dict[str, float] = {}
        nodes = quantized_nodes(qmodel)
        gated = GatedGraph(qmodel, fp32_model, nodes, ctx.threads)
        for index, name in enumerate(nodes):
            errors[name] = measure.error(gated.runner(name))
            if (index + 1) % 20 == 0 or index + 1 == len(nodes):
                log(f"{role}: sensitivity {index + 1}/{len(nodes)} nodes")
    finally:
        measure.close()
        if gated is not None:
            gated.close()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache, json.dumps({"baseline": baseline, "errors": errors}) + "\n")
    return baseline, errors


def sensitivities(
    ctx: SearchContext,
    quantized: Mapping[str, Path],
    qmodels: Mapping[str, object],
    fp32_models: Mapping[str, object],
    base: Mapping[str, Path],
    cache_dir: Path | None,
    log: Log,
) -> tuple[dict[str, dict[str, float]], dict[str, tuple[float, dict[str, float]]]]:
    """Role -> FLOPs per node, role -> (baseline, error per node quantized alone)."""
    from ..hashing import sha256_file

    flops, ranked = {}, {}
    for role in ctx.roles:
        products = {n.name for n in fp32_models[role].graph.node if n.op_type in COMPUTE_OPS}
        twins = split_twins(ranked, qmodels) if role == FUSED else None
        if twins is not None:  # the same nodes: each measured once, in the split layout
            # every product counts, INT8 or not (those INT8 never takes included): the share
            # of the FLOPs is the fused graph's, as the split graphs' is theirs
            flops[role] = {
                FUSED_PREFIX[r] + name: f
                for r in FUSED_PREFIX
                for name, f in flops[r].items()
                if FUSED_PREFIX[r] + name in products
            }
            errors = {twin: ranked[r][1][name] for (r, name), twin in twins.items()}
            ranked[role] = (max(ranked[r][0] for r in FUSED_PREFIX), errors)
            log(f"{role}: sensitivities of its nodes' twins in the split graphs")
            continue
        flops[role] = {n: f for n, f in node_flops(fp32_models[role]).items() if n in products}
        cache = None
        if cache_dir is not None:
            sha = sha256_file(quantized[role])
            key = _digest("alone-gated", sha, ctx.search.key(), ranking_pairs(ctx), ctx.eval_batch)
            cache = Path(cache_dir) / f"{role}.sensitivity.{key[:16]}.json"
        baseline, errors = sensitivity(
            ctx, role, qmodels[role], fp32_models[role], base, cache, log
        )
        ranked[role] = (baseline, errors)
    return flops, ranked


def split_twins(done: Mapping[str, object], qmodels: Mapping[str, object]):
    """:func:`.layout_alias.fused_twins` of the quantized nodes, if the split roles are done."""
    if not all(r in done for r in FUSED_PREFIX) or FUSED not in qmodels:
        return None
    split = {r: quantized_nodes(qmodels[r]) for r in FUSED_PREFIX}
    return fused_twins(split, quantized_nodes(qmodels[FUSED]))
