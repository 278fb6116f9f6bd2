"""SmoothQuant-style migration before INT8 (``quantize --smooth``): the FP32 function is kept,
an outlier channel stops setting the activation scale, the choice is recorded and checked."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from dit_deploy.errors import ConfigError
from dit_deploy.precision import cli as quantize_cli
from dit_deploy.precision.int8 import Int8Options, cache_file, quantize_int8
from dit_deploy.precision.pipeline import run_quantize
from dit_deploy.precision.plan import PLAN_FILE
from dit_deploy.precision.reuse import stale_reason
from dit_deploy.precision.samples import PairSource
from dit_deploy.precision.smooth import (
    DEFAULT_ALPHA,
    cached_smoothing,
    channel_maxima,
    int8_errors,
    migration_scales,
    smooth,
    smoothable,
)
from dit_deploy.precision.verify import Floor
from tests.conftest import copy_export
from tests.test_precision_auto import SPLIT_FP32, _options, _parse, _quiet

K = 16


def _graph(seed: int = 0):
    """x (2, 5, K) -> MatMul W (K, 12) and a residual Add on x itself; y2 = Gemm(x2, B^T)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((K, 12)).astype(np.float32)
    b = rng.standard_normal((6, K)).astype(np.float32)  # Gemm transB: (N, K)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
        helper.make_node("Add", ["x", "x"], ["twice"], name="residual"),
        helper.make_node("Gemm", ["x2", "b"], ["y2"], name="gemm", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, K]),
            helper.make_tensor_value_info("x2", TensorProto.FLOAT, [3, K]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 12]),
            helper.make_tensor_value_info("twice", TensorProto.FLOAT, [2, 5, K]),
            helper.make_tensor_value_info("y2", TensorProto.FLOAT, [3, 6]),
        ],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in model.graph.output], session.run(None, feeds), strict=True))


def _feeds(rng, outlier: float = 1.0):
    x = rng.standard_normal((2, 5, K)).astype(np.float32)
    x[..., 3] *= outlier  # one loud channel, as in transformer activations
    return {"x": x, "x2": rng.standard_normal((3, K)).astype(np.float32)}


def test_migration_scales_follow_the_smoothquant_formula():
    x, w = np.array([4.0, 1.0, 0.0]), np.array([1.0, 4.0, 2.0])
    np.testing.assert_allclose(migration_scales(x, w, 0.5), [2.0, 0.5, np.sqrt(1e-5 / 2)])
    np.testing.assert_allclose(migration_scales(x, w, 1.0), [4.0, 1.0, 1e-5], rtol=1e-6)
    np.testing.assert_allclose(migration_scales(x, w, 0.0), [1.0, 0.25, 0.5])


def test_smoothing_keeps_the_fp32_function_and_other_consumers_read_the_raw_tensor():
    model = _graph()
    found = smoothable(model)
    assert {a: [c.node for c in cs] for a, cs in found.items()} == {"x": ["mm"], "x2": ["gemm"]}
    assert found["x2"][0].axis == 1  # Gemm transB: K is the weight's second axis
    rng = np.random.default_rng(1)
    calib = [_feeds(rng, 50.0) for _ in range(3)]
    maxima = channel_maxima(model, calib, ["x", "x2"])
    assert maxima["x"].shape == (K,) and maxima["x"][3] > 20 * np.median(maxima["x"])
    smoothed, changed = smooth(model, maxima, {"x": 0.8, "x2": 0.8})
    onnx.checker.check_model(smoothed)
    assert sorted(changed) == ["gemm", "mm"]
    nodes = {n.name: n for n in smoothed.graph.node}
    assert nodes["mm"].input[0] == "x_smoothed" and nodes["residual"].input[:] == ["x", "x"]
    feeds = _feeds(np.random.default_rng(2), 50.0)
    before, after = _run(model, feeds), _run(smoothed, feeds)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-4, atol=1e-4)
    assert smooth(model, maxima, {"x2": 0.8})[1] == ["gemm"]  # only the activations asked
    with pytest.raises(ValueError, match="alpha"):
        smooth(model, maxima, {"x": 1.5})


class _Reader:
    """A calibration reader over a list of feeds (``CalibStridedMinMax`` calls set_range)."""

    def __init__(self, feeds):
        self.feeds, self.start, self.end = feeds, 0, len(feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, min(end_index, len(self.feeds))

    def get_next(self):
        if self.start >= self.end:
            return None
        self.start += 1
        return self.feeds[self.start - 1]

    def __len__(self) -> int:
        return len(self.feeds)


def test_smoothing_an_outlier_channel_cuts_the_int8_error(tmp_path):
    """One channel 50x louder: per-tensor activation scale is set by it alone and every other
    channel keeps a few INT8 levels; moved into the per-channel weights, the error drops."""
    model = _graph()
    rng = np.random.default_rng(3)
    calib = [_feeds(rng, 50.0) for _ in range(8)]
    held_out = [_feeds(rng, 50.0) for _ in range(4)]
    errors = {}
    for label, alpha in (("plain", None), ("smoothed", DEFAULT_ALPHA)):
        src = model
        if alpha is not None:
            maxima = channel_maxima(model, calib, ["x", "x2"])
            src, _ = smooth(model, maxima, {"x": alpha, "x2": alpha})
        path = tmp_path / f"{label}.onnx"
        onnx.save(src, path)
        out = tmp_path / f"{label}.int8.onnx"
        options = Int8Options(smooth=alpha)
        quantize_int8(path, out, "g", _Reader(calib), tmp_path / f"{label}.json", options)
        quantized = onnx.load(out)
        assert {n.name for n in quantized.graph.node if n.op_type == "Mul"} == (
            set() if alpha is None else {"x/smooth", "x2/smooth"}
        )
        num = den = 0.0
        for feeds in held_out:
            ref, got = _run(model, feeds)["y"], _run(quantized, feeds)["y"]
            num, den = num + np.abs(got - ref).sum(), den + np.abs(ref).sum()
        errors[label] = num / den
    assert errors["smoothed"] < 0.5 * errors["plain"], errors


def test_smoothing_is_chosen_per_activation_by_its_held_out_int8_error():
    """An outlier channel: smoothing lowers the error. A channel silent in calibration that
    wakes up on other pairs: smoothing would amplify it past the scale, so it is refused."""
    model = _graph()
    rng = np.random.default_rng(5)
    calib = [_feeds(rng, 50.0) for _ in range(6)]
    for feeds in calib:
        feeds["x2"][:, 7] = 0.0  # x2's channel 7 never fires in calibration
    held_out = [_feeds(rng, 50.0) for _ in range(4)]
    maxima = channel_maxima(model, calib, ["x", "x2"])
    errors = int8_errors(model, held_out, maxima, DEFAULT_ALPHA)
    assert errors["x"][1] < 0.5 * errors["x"][0]  # the outlier: smoothing helps
    assert errors["x2"][1] > errors["x2"][0]  # the silent channel: smoothing hurts


def test_smoothing_measurements_are_cached_by_graph_pairs_and_alpha(tmp_path):
    model = _graph()
    rng = np.random.default_rng(4)
    calib = [_feeds(rng, 50.0) for _ in range(3)]
    held_out = [_feeds(rng, 50.0) for _ in range(2)]
    sources = [PairSource(None, "train", 3), PairSource(None, "val", 2, seed=2)]

    def measure(sha="sha-a", alpha=DEFAULT_ALPHA, calib_feeds=lambda: calib):
        return cached_smoothing(
            model, calib_feeds, lambda: held_out, alpha, tmp_path, "g", sha, sources
        )

    def unread():
        raise AssertionError("a cache hit reads no pairs")

    first, hit = measure()
    assert not hit and set(first.strengths()) == {"x"}  # x2 has no outlier here
    again, hit = measure(calib_feeds=unread)
    assert hit and again.errors == first.errors
    assert all(np.array_equal(first.maxima[k], again.maxima[k]) for k in first.maxima)
    (entry,) = tmp_path.glob("g.smoothing.*.npz")
    assert not measure(sha="sha-b")[1]  # another graph
    assert not measure(alpha=0.5)[1]  # another strength
    entry.write_bytes(b"not an npz")
    again, hit = measure()
    assert not hit and again.errors == first.errors


def test_range_cache_and_options_know_the_smoothing(tmp_path):
    source = PairSource(None, "train", 4)
    a = cache_file(tmp_path, "r", "sha", source, Int8Options())
    b = cache_file(tmp_path, "r", "sha", source, Int8Options(smooth=None))
    assert a != b  # other ranges: a smoothed graph's activations are other tensors
    with pytest.raises(ConfigError, match="smoothing strength"):
        Int8Options(smooth=1.5)
    assert _parse([str(tmp_path), "--precision", "int8"]).smooth == DEFAULT_ALPHA
    assert _parse([str(tmp_path), "--precision", "int8", "--no-smooth"]).smooth is None
    assert _parse([str(tmp_path), "--precision", "int8", "--smooth", "0.5"]).smooth == 0.5
    with pytest.raises(SystemExit):
        _parse([str(tmp_path), "--precision", "int8", "--smooth", "2"])


def test_smoothing_is_recorded_and_another_strength_is_stale(tiny_export, tmp_path):
    out = copy_export(tiny_export, tmp_path / "e")
    opts = _options("int8", tmp_path / "c", keep_fp32=SPLIT_FP32)
    result = run_quantize(out, opts, log=_quiet)
    (outcome,) = result.graphs
    assert outcome.detail["smooth_alpha"] == DEFAULT_ALPHA
    model = onnx.load(out / "mask_decoder.int8.onnx")
    smoothed = sum(n.name.endswith("/smooth") for n in model.graph.node)
    assert smoothed == outcome.detail["smoothed_activations"] > 0
    assert stale_reason(out, "int8", opts.calib) is None
    assert "smoothed with alpha 0.8, not None" in stale_reason(out, "int8", opts.calib, None)


def test_a_cached_rerun_reads_only_the_graphs_it_converts(tiny_export, tmp_path, monkeypatch):
    """Smoothing choice and ranges cached: the layout's other FP32 graphs (hundreds of MB
    each at ViT-B) are not read, and the INT8 graph is the same (only its recipe's
    ``cache_hit`` differs)."""
    from dit_deploy.precision import int8_prepare

    opts = _options("int8", tmp_path / "c", keep_fp32=SPLIT_FP32)
    first = copy_export(tiny_export, tmp_path / "a")
    run_quantize(first, opts, log=_quiet)
    read: list[str] = []
    original = int8_prepare._LazyModels.__missing__

    def counting(self, role):
        read.append(role)
        return original(self, role)

    monkeypatch.setattr(int8_prepare._LazyModels, "__missing__", counting)
    again = copy_export(tiny_export, tmp_path / "b")
    run_quantize(again, opts, log=_quiet)
    assert read == ["mask_decoder"]
    a, b = (onnx.load(d / "mask_decoder.int8.onnx") for d in (first, again))
    assert a.graph.SerializeToString() == b.graph.SerializeToString()  # metadata: cache_hit


def test_plan_reuse_with_another_smoothing_is_refused(tiny_export, tmp_path):
    src = copy_export(tiny_export, tmp_path / "src")
    floor = Floor(min_mask_iou=0.0, max_miou_drop=1.0)
    opts = _options("int8", tmp_path / "c", auto=True, keep_fp32=SPLIT_FP32, floor=floor)
    result = run_quantize(src, opts, log=_quiet)
    assert result.plan.calibration["smooth_alpha"] == DEFAULT_ALPHA
    assert "smoothed with alpha 0.8" in result.plan.method
    smoothed = len(result.plan.roles["mask_decoder"].smoothed)
    assert f"{smoothed} activation(s) smoothed" in quantize_cli.format_table(result)
    out = copy_export(tiny_export, tmp_path / "e")
    reuse = dataclasses.replace(opts, auto=False, plan=Path(src / PLAN_FILE))
    no_smooth = dataclasses.replace(reuse, int8=Int8Options(smooth=None))
    with pytest.raises(ConfigError, match="searched with --smooth 0.8, not --no-smooth"):
        run_quantize(out, no_smooth, log=_quiet)
    # the plan names the activations it smoothed; reused with other search pairs (which
    # would choose again), exactly those are smoothed
    names = result.plan.roles["mask_decoder"].smoothed
    assert (
        names
        and "smoothed"
        in json.loads((src / PLAN_FILE).read_text())["precisions"]["int8"]["roles"]["mask_decoder"]
    )
    other = dataclasses.replace(reuse, search=PairSource(None, "val", 8, seed=7))
    assert run_quantize(out, other, log=_quiet).written
    model = onnx.load(out / "mask_decoder.int8.onnx")
    muls = {n.name for n in model.graph.node if n.name.endswith("/smooth")}
    assert muls == {name + "/smooth" for name in names}
    # a plan smoothing fewer activations: another graph, so other cached ranges (the range
    # cache is keyed by the graph quantized, not the export's FP32 graph)
    data = json.loads((src / PLAN_FILE).read_text())
    data["precisions"]["int8"]["roles"]["mask_decoder"]["smoothed"] = names[:1]
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    out = copy_export(tiny_export, tmp_path / "e2")
    assert run_quantize(out, dataclasses.replace(reuse, plan=edited), log=_quiet).written
    model = onnx.load(out / "mask_decoder.int8.onnx")
    assert {n.name for n in model.graph.node if n.name.endswith("/smooth")} == {
        names[0] + "/smooth"
    }


def test_pair_bounded_weights_keep_every_adjacent_pair_within_the_int16_budget():
    """|c_2k| + |c_2k+1| <= 128 along K for every output channel, never coarser than 7 bits,
    and on Gaussian weights finer than 7 bits (more levels for the largest weight)."""
    from dit_deploy.precision.int8 import pair_bounded_codes

    rng = np.random.default_rng(8)
    for shape, k_axis in (((63, 40), 0), ((40, 64), 1)):
        w = rng.standard_normal(shape)
        w[3] *= 6.0  # an outlier row/column
        codes, scale = pair_bounded_codes(w, k_axis)
        assert codes.dtype == np.int8 and codes.shape == w.shape
        kn = np.moveaxis(np.abs(codes.astype(np.int32)), k_axis, 0)
        padded = np.concatenate([kn, np.zeros_like(kn[:1])]) if len(kn) % 2 else kn
        assert padded.reshape(-1, 2, kn.shape[1]).sum(axis=1).max() <= 128
        wk = np.moveaxis(w, k_axis, 0)
        assert np.all(np.abs(wk - codes_f(codes, scale, k_axis)) <= scale / 2 + 1e-6)
        assert np.all(scale <= np.abs(wk).max(axis=0) / 64 + 1e-7)  # never coarser than 7 bits
        assert np.median(np.abs(wk).max(axis=0) / scale) > 70  # finer than 7 bits


def codes_f(codes, scale, k_axis):
    return np.moveaxis(codes.astype(np.float64), k_axis, 0) * scale
