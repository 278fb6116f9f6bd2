"""INT8 --auto's per-node sensitivity from one gated session: with one gate open the graph
computes what the graph with only that node quantized computes; all closed, the FP32 graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from dit_deploy.precision.int8 import Int8Options, quantize_int8
from dit_deploy.precision.sensitivity import GatedGraph, quantized_nodes, without_qdq
from tests.test_precision_smooth import _feeds, _graph, _Reader


def _run(model, feeds) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    return dict(zip(names, session.run(names, feeds), strict=True))


def test_one_open_gate_is_that_node_quantized_alone(tmp_path):
    fp32 = _graph()
    rng = np.random.default_rng(2)
    calib = [_feeds(rng, 20.0) for _ in range(4)]
    onnx.save(fp32, tmp_path / "g.onnx")
    options = Int8Options(op_types=("MatMul", "Gemm"), smooth=None)
    q_path, cache = tmp_path / "q.onnx", tmp_path / "c.json"
    quantize_int8(tmp_path / "g.onnx", q_path, "g", _Reader(calib), cache, options)
    qmodel = onnx.load(tmp_path / "q.onnx")
    nodes = quantized_nodes(qmodel)
    assert sorted(nodes) == ["gemm", "mm"]
    gated = GatedGraph(qmodel, fp32, nodes)
    feeds = _feeds(rng, 20.0)
    exact = _run(fp32, feeds)
    for name in nodes:
        alone = _run(without_qdq(qmodel, fp32, set(nodes) - {name}), feeds)
        got = gated.runner(name)(feeds)
        for out, value in alone.items():
            np.testing.assert_allclose(got[out], value, rtol=1e-5, atol=1e-5)
        assert any(not np.allclose(got[o], exact[o], atol=1e-6) for o in exact), name
    closed = gated.runner(None)(feeds)
    for out, value in exact.items():
        np.testing.assert_allclose(closed[out], value, rtol=1e-6, atol=1e-6)
