"""One FP32 pass per layout gives INT8 its ranges and smoothing maxima: the ranges equal what
ONNX Runtime's own calibration finds (so the Q/DQ graphs are the same), smoothed tensors
included, and the split layout is observed in one run of the chain."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from dit_deploy.precision.calibration_pass import (
    calibrated_tensors,
    collect_stats,
    smoothed_ranges,
    write_range_cache,
)
from dit_deploy.precision.chain import PairInputs, chains
from dit_deploy.precision.int8 import (
    Int8Options,
    StreamingCalibrationReader,
    cache_file,
    quantize_int8,
)
from dit_deploy.precision.pipeline import run_quantize
from dit_deploy.precision.smooth import (
    channel_maxima,
    channel_sizes,
    int8_errors,
    migration_scales,
    smooth,
    smoothable,
)
from dit_deploy.runtime.manifest import cached_sha256, read_manifest
from tests.conftest import copy_export
from tests.test_precision_auto import _options, _quiet
from tests.test_precision_smooth import _feeds, _graph, _Reader


def _scales(model) -> dict[str, np.ndarray]:
    """QuantizeLinear input tensor -> its scale, for every activation Q node."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return {
        n.input[0]: inits[n.input[1]]
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits
    }


def _ranges(path) -> dict[str, float]:
    data = json.loads(path.read_text())["data"]
    return {name: float(v["highest"]["data"][0]) for name, v in data.items()}


@pytest.mark.parametrize("smoothed", [False, True])
def test_ranges_from_the_pass_give_the_graph_onnx_runtime_calibration_gives(tmp_path, smoothed):
    model = _graph()
    rng = np.random.default_rng(11)
    calib = [_feeds(rng, 30.0) for _ in range(5)]
    observe = {"dit_fused": (calibrated_tensors(model, ("MatMul", "Gemm")), channel_sizes(model))}
    stats = collect_stats("fused", {"dit_fused": model}, observe, calib)["dit_fused"]
    assert set(stats.channel_max) == {"x", "x2"}
    np.testing.assert_allclose(
        stats.channel_max["x"], np.abs(np.stack([f["x"] for f in calib])).max(axis=(0, 1, 2))
    )
    src = model
    if smoothed:
        src, _ = smooth(model, stats.channel_max, {"x": 0.8, "x2": 0.8})
    graph = tmp_path / "g.onnx"
    onnx.save(src, graph)
    options = Int8Options(op_types=("MatMul", "Gemm"))
    ours = tmp_path / "ours.json"
    write_range_cache(ours, smoothed_ranges(src, stats))
    quantize_int8(graph, tmp_path / "ours.onnx", "g", None, ours, options)
    theirs = tmp_path / "theirs.json"
    quantize_int8(graph, tmp_path / "theirs.onnx", "g", _Reader(calib), theirs, options)
    mine, ort_ranges = _ranges(ours), _ranges(theirs)
    for name, peak in ort_ranges.items():
        assert mine[name] == pytest.approx(peak, rel=1e-6), name
    if smoothed:
        assert {"x_smoothed", "x2_smoothed"} <= set(ort_ranges)
    a, b = _scales(onnx.load(tmp_path / "ours.onnx")), _scales(onnx.load(tmp_path / "theirs.onnx"))
    assert a.keys() == b.keys() and len(a) >= 2
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6)


def _q(x: np.ndarray, absmax, levels: int) -> np.ndarray:
    scale = np.asarray(absmax, np.float64) / levels
    return np.clip(np.round(x / scale), -levels, levels) * scale


@pytest.mark.parametrize("levels", [127, 64])
def test_the_fp32_error_estimate_agrees_with_float64_arithmetic(levels):
    """FP32 products and INT8 weight codes give the errors exact arithmetic gives."""
    model = _graph()
    rng = np.random.default_rng(5)
    calib = [_feeds(rng, 50.0) for _ in range(4)]
    held_out = [_feeds(rng, 50.0) for _ in range(3)]
    maxima = channel_maxima(model, calib, ["x", "x2"])
    errors = int8_errors(model, held_out, maxima, 0.8, weight_levels=levels)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for name, (consumer,) in smoothable(model).items():
        w = inits[consumer.weight].astype(np.float64)
        w = w if consumer.axis == 0 else w.T
        x_max = maxima[name].astype(np.float64)
        s = migration_scales(x_max, np.abs(w).max(axis=1), 0.8).astype(np.float64)
        x = np.concatenate([f[name].reshape(-1, w.shape[0]) for f in held_out]).astype(np.float64)
        exact = x @ w
        for i, scale in enumerate((np.ones_like(s), s)):
            ws = w * scale[:, None]
            xq = _q(x / scale, (x_max / scale).max(), 127)
            wq = _q(ws, np.abs(ws).max(axis=0), levels)
            want = np.abs(xq @ wq - exact).sum() / np.abs(exact).sum()
            assert errors[name][i] == pytest.approx(want, rel=2e-3), (name, i)


def test_the_split_chain_pass_ranges_each_graph_as_its_own_calibration_would(tiny_export, tmp_path):
    """The pipeline's ranges (one run of text -> encoder -> decoder per pair) equal ONNX
    Runtime calibrating each graph alone on its FP32 upstream's outputs; the report says the
    ranges were measured, and a second run reads them from the cache."""
    out = copy_export(tiny_export, tmp_path / "e")
    opts = _options("int8", tmp_path / "c", keep_fp32=("dit_fused",))
    opts.int8 = Int8Options(smooth=None)
    result = run_quantize(out, opts, log=_quiet)
    assert [g.role for g in result.graphs] == ["text_encoder", "dit_encoder", "mask_decoder"]
    assert not any(g.detail["cache_hit"] for g in result.graphs)
    manifest = read_manifest(out)
    files = manifest.graph_files(out)
    fp32 = chains(files)
    prepare = PairInputs(out, manifest)
    for role in ("dit_encoder", "mask_decoder"):
        ours = cache_file(tmp_path / "c", role, cached_sha256(files[role]), opts.calib, opts.int8)
        theirs = tmp_path / f"{role}.ort.json"
        reader = StreamingCalibrationReader(opts.calib, role, prepare, fp32)
        quantize_int8(files[role], tmp_path / f"{role}.q.onnx", role, reader, theirs, opts.int8)
        mine, ort_ranges = _ranges(ours), _ranges(theirs)
        assert mine.keys() >= ort_ranges.keys()
        for name, peak in ort_ranges.items():
            assert mine[name] == pytest.approx(peak, rel=1e-5, abs=1e-6), (role, name)
    again = run_quantize(copy_export(tiny_export, tmp_path / "e2"), opts, log=_quiet)
    assert all(g.detail["cache_hit"] for g in again.graphs)
