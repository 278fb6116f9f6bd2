"""Automatic mixed precision (``quantize --auto`` / ``--plan``): FP16 overflow repair, INT8
sensitivity fallback, the plan file, TensorRT's graph form and the gates' units."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from dit_deploy.errors import ArtifactError, ConfigError
from dit_deploy.hashing import sha256_file
from dit_deploy.precision import cli as quantize_cli
from dit_deploy.precision.auto import _shortest_prefix, fill_gaps, rank_nodes
from dit_deploy.precision.graph_checks import int8_problems
from dit_deploy.precision.int8 import decoder_attention_matmuls
from dit_deploy.precision.pipeline import QuantizeFailed, QuantizeOptions, run_quantize
from dit_deploy.precision.plan import PLAN_FILE, read_plan
from dit_deploy.precision.samples import PairSource
from dit_deploy.precision.sensitivity import quantized_nodes, without_qdq
from dit_deploy.precision.verify import AUTO_FLOORS, Floor
from dit_deploy.runtime import read_manifest
from tests.conftest import copy_export

SPLIT_FP32 = ("text_encoder", "dit_encoder", "dit_fused")  # only mask_decoder converted
OVERFLOW_NODES = {"overflow/scale_up", "overflow/scale_down"}


def _options(precision: str, cache: Path, **kw) -> QuantizeOptions:
    return QuantizeOptions(
        precision=precision,
        calib=PairSource(None, "train", 6),
        eval=PairSource(None, "val", 8, seed=1),
        search=PairSource(None, "val", 8, seed=2),
        cache_dir=cache,
        latency_runs=0,
        **kw,
    )


def _quiet(_message: str) -> None:
    pass


# ------------------------------------------------------------------------------- FP16
def _with_overflow(export: Path) -> Path:
    """Scale the logits by 1e5 and back in every graph that writes them: exact in FP32,
    past 65504 (inf) in FP16. The manifest's hashes are updated, so only precision tells."""
    manifest = read_manifest(export)
    graphs = dict(manifest.graphs)
    for role, spec in manifest.graphs.items():
        if "low_res_logits" not in [o.name for o in spec.outputs]:
            continue
        model = onnx.load(export / spec.file)
        for node in model.graph.node:
            node.output[:] = ["logits_raw" if o == "low_res_logits" else o for o in node.output]
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(1e5, np.float32), "overflow_up"),
                numpy_helper.from_array(np.array(1e-5, np.float32), "overflow_down"),
            ]
        )
        model.graph.node.extend(
            [
                helper.make_node(
                    "Mul", ["logits_raw", "overflow_up"], ["logits_big"], "overflow/scale_up"
                ),
                helper.make_node(
                    "Mul",
                    ["logits_big", "overflow_down"],
                    ["low_res_logits"],
                    "overflow/scale_down",
                ),
            ]
        )
        onnx.checker.check_model(model)
        onnx.save(model, export / spec.file)
        graphs[role] = dataclasses.replace(spec, sha256=sha256_file(export / spec.file))
    dataclasses.replace(manifest, graphs=graphs).write(export)
    return export


@pytest.fixture(scope="module")
def overflowing(tiny_export, tmp_path_factory) -> Path:
    return _with_overflow(copy_export(tiny_export, tmp_path_factory.mktemp("ovf") / "e"))


def test_fp16_overflow_breaks_plain_conversion_and_auto_repairs_it(overflowing, tmp_path):
    out = copy_export(overflowing, tmp_path / "plain")
    with pytest.raises(QuantizeFailed, match="mask agreement") as info:
        run_quantize(out, _options("fp16", tmp_path / "c"), log=_quiet)
    # the 1e5 constant saturates at 65504 in FP16 and the product leaves the range
    assert all(r.mask_iou < 0.9 for r in info.value.result.layouts)

    out = copy_export(overflowing, tmp_path / "auto")
    lines: list[str] = []
    result = run_quantize(out, _options("fp16", tmp_path / "c", auto=True), log=lines.append)
    assert result.written and result.floor == AUTO_FLOORS["fp16"] == Floor(0.999, 0.002)
    for report in result.layouts:
        assert np.isfinite(report.logits_max_abs) and report.logits_max_abs < 0.15
        assert report.mask_iou >= 0.999 and report.ok
    plan = result.plan
    for role in ("mask_decoder", "dit_fused"):
        kept = {k.node: k for k in plan.roles[role].kept}
        assert set(kept) >= OVERFLOW_NODES, kept
        assert "FP16 range" in kept["overflow/scale_up"].reason
        assert "logits_big" in kept["overflow/scale_up"].reason
    # nothing in the text encoder leaves the range; what it keeps, the error rounds chose
    assert all("FP16 error" in k.reason for k in plan.roles["text_encoder"].kept)
    assert len(plan.rounds) >= 2  # the range round, then error rounds to reach 0.999
    assert any("outside the FP16 range" in line for line in lines)
    # the kept nodes compute in FP32 in the written graph
    model = onnx.load(out / "mask_decoder.fp16.onnx")
    inits = {t.name: t.data_type for t in model.graph.initializer}
    up = next(n for n in model.graph.node if n.name == "overflow/scale_up")
    assert inits[up.input[1]] == TensorProto.FLOAT
    text = quantize_cli.format_table(result)
    assert "overflow/scale_up [Mul]: FP16 range" in text


def test_fp16_error_rounds_keep_the_nodes_adding_the_most_error(tiny_export, tmp_path):
    """Gates no FP16 graph can meet: the search keeps adding the nodes that add the most
    relative error, a few per round, each with its measured error, then reports the miss."""
    out = copy_export(tiny_export, tmp_path / "e")
    impossible = Floor(min_mask_iou=1.0, max_miou_drop=0.0)
    keep = ("text_encoder", "dit_encoder", "dit_fused")
    opts = _options("fp16", tmp_path / "c", auto=True, keep_fp32=keep, floor=impossible)
    opts.search_rounds = 3
    with pytest.raises(QuantizeFailed) as info:
        run_quantize(out, opts, log=_quiet)
    plan = info.value.result.plan
    kept = plan.roles["mask_decoder"].kept
    by_error = [k for k in kept if k.reason.startswith("FP16 error")]
    assert len(by_error) >= 3 * 4 and all(k.error > 0 for k in by_error)  # 4 a round
    assert len(plan.rounds) == 4 and [r["kept"] for r in plan.rounds] == sorted(
        r["kept"] for r in plan.rounds
    )
    assert not (tmp_path / "e" / PLAN_FILE).exists()  # nothing written below the gates


def test_relative_errors_and_fp16_drift_on_a_two_node_graph():
    from dit_deploy.precision.auto import fp16_drift
    from dit_deploy.precision.tensor_stats import relative_errors

    def graph(scale: float):
        nodes = [
            helper.make_node("Relu", ["x"], ["a"], "first"),
            helper.make_node("Mul", ["a", "s"], ["y"], "second"),
        ]
        s = numpy_helper.from_array(np.array(scale, np.float32), "s")
        vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("x", "y")]
        model = helper.make_model(helper.make_graph(nodes, "g", vi[:1], vi[1:], [s]))
        model.opset_import[0].version = 17
        return model

    feeds = [{"x": np.array([1.0, -1.0, 2.0, 3.0], np.float32)}]
    errors = relative_errors(graph(2.0), graph(2.2), feeds, ["a", "y"])
    assert errors["a"] == 0.0 and errors["y"] == pytest.approx(0.1, rel=1e-5)
    drift = fp16_drift(errors, graph(2.0))
    assert drift["first"] == 0.0 and drift["second"] == pytest.approx(0.1, rel=1e-5)


def test_fill_gaps_joins_islands_one_node_apart():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], "n0"),
        helper.make_node("Relu", ["a"], ["b"], "n1"),
        helper.make_node("Relu", ["b"], ["c"], "n2"),
        helper.make_node("Relu", ["c"], ["d"], "n3"),
        helper.make_node("Relu", ["d"], ["y"], "n4"),
    ]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph(nodes, "g", vi[:1], vi[1:]))
    assert fill_gaps(model, {"n0", "n2"}) == {"n0", "n1", "n2"}
    assert fill_gaps(model, {"n0", "n3"}) == {"n0", "n3"}  # two apart: not a one-node gap


# ------------------------------------------------------------------------------- INT8
def test_rank_nodes_orders_by_error_per_flop_or_by_error():
    errors = {"a": {"big": 0.04, "small": 0.02}, "b": {"mid": 0.03}}
    flops = {"a": {"big": 4e6, "small": 1e5}, "b": {"mid": 1e6}}
    by_density = [n for _, _, n in rank_nodes(errors, flops)]
    assert by_density == ["small", "mid", "big"]  # 2e-7, 3e-8, 1e-8 error per FLOP
    assert [n for _, _, n in rank_nodes(errors, flops, "error")] == ["big", "mid", "small"]
    with pytest.raises(ValueError, match="rank"):
        rank_nodes(errors, flops, "random")


@pytest.mark.parametrize("threshold", [0, 1, 3, 5, 6, 13, 20])
def test_shortest_prefix_finds_the_first_passing_count(threshold):
    calls: list[int] = []

    def passes(k: int) -> bool:
        calls.append(k)
        return k >= threshold

    assert _shortest_prefix(passes, 20) == threshold
    assert len(calls) <= 2 * 5 + 2  # doubling then bisection, not a linear scan


@pytest.fixture(scope="module")
def int8_auto(tiny_export, tmp_path_factory):
    """INT8 --auto on the mask decoder alone (the other graphs FP32), gates strict enough to
    need a fallback on the tiny model but not a full one."""
    out = copy_export(tiny_export, tmp_path_factory.mktemp("i8") / "e")
    cache = tmp_path_factory.mktemp("cache")
    floor = Floor(min_mask_iou=0.985, max_miou_drop=0.01)
    opts = _options("int8", cache, auto=True, keep_fp32=SPLIT_FP32, floor=floor)
    # on 8 pairs of the tiny model the mask IoU moves by a point between pair sets: searched
    # on the verification pairs themselves, the verdict is the search's (the default search
    # pairs are other ones: test_gates_are_in_stated_units)
    opts.search = opts.eval
    lines: list[str] = []
    result = run_quantize(out, opts, log=lines.append)
    return out, cache, result, lines


def test_int8_auto_keeps_a_ranked_prefix_and_reports_flop_share(int8_auto, tiny_export):
    out, _cache, result, lines = int8_auto
    assert result.written and all(r.ok for r in result.layouts)
    plan = result.plan
    role = plan.roles["mask_decoder"]
    assert 0 < len(role.kept) < role.quantizable  # a fallback, not all or nothing
    assert [k.op_type for k in role.kept] and {k.op_type for k in role.kept} <= {
        "MatMul",
        "Gemm",
        "Conv",
    }
    # the kept nodes are the first of the error-per-FLOP ranking, in that order ...
    density = [k.error / k.flops for k in role.kept]
    assert all(d > 0 for d in density) and density == sorted(density, reverse=True)
    # ... of the ranking of every quantizable node: the shortest passing prefix, less the
    # large nodes the search put back in INT8 ("requantize NODE ... ok")
    from dit_deploy.graph_flops import node_flops
    from dit_deploy.precision.auto import rank_nodes

    (sensitivity,) = _cache.glob("mask_decoder.sensitivity.*.json")
    errors = json.loads(sensitivity.read_text())["errors"]
    spec = read_manifest(tiny_export).graphs["mask_decoder"]
    flops = node_flops(onnx.load(tiny_export / spec.file), batch=1)
    order = [n for _, _, n in rank_nodes({"mask_decoder": errors}, {"mask_decoder": flops})]
    back = {
        line.split("(requantize ", 1)[1].split(")", 1)[0]
        for line in lines
        if "(requantize " in line and line.endswith(" ok")
    }
    kept = {k.node for k in role.kept}
    assert kept == set(order[: len(kept) + len(back)]) - back
    assert 0.0 < plan.int8_flop_share < 1.0
    assert role.int8_flops / role.total_flops == pytest.approx(plan.int8_flop_share)
    assert any("sensitivity" in line for line in lines)
    # the written graph: kept nodes read FP32, every other quantizable node reads Q/DQ
    model = onnx.load(out / "mask_decoder.int8.onnx")
    still = set(quantized_nodes(model))
    assert not still & set(role.nodes)
    assert len(still) == role.quantizable - len(role.kept)
    assert "INT8 share of MatMul/Gemm/Conv FLOPs" in quantize_cli.format_table(result)


def test_int8_auto_graph_is_tensorrt_acceptable(int8_auto):
    out, *_ = int8_auto
    model = onnx.load(out / "mask_decoder.int8.onnx")
    assert int8_problems(model) == []  # zero points 0 (INT8), no INT32 bias, per-channel axes
    for value in [*model.graph.input, *model.graph.output]:
        assert value.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.INT64)
    inits = {t.name: t for t in model.graph.initializer}
    dq_in = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    assert all(inits[n].data_type == TensorProto.INT8 for n in dq_in if n in inits)


def test_removing_every_qdq_pair_gives_back_the_fp32_graph(tiny_export, int8_auto):
    out, *_ = int8_auto
    qmodel = onnx.load(out / "mask_decoder.int8.onnx")
    fp32 = onnx.load(tiny_export / "mask_decoder.onnx")
    stripped = without_qdq(qmodel, fp32, set(quantized_nodes(qmodel)))
    assert not [n for n in stripped.graph.node if n.op_type.endswith("QuantizeLinear")]
    rng = np.random.default_rng(0)
    feeds = {
        i.name: rng.standard_normal(
            [d.dim_value or 1 for d in i.type.tensor_type.shape.dim]
        ).astype(np.float32)
        for i in fp32.graph.input
    }

    def run(model):
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        return session.run(["low_res_logits"], feeds)[0]

    assert np.abs(run(stripped) - run(fp32)).max() < 1e-4
    assert np.abs(run(qmodel) - run(fp32)).max() > 1e-3  # the partly quantized one differs


# ------------------------------------------------------------------------------- plan
def test_plan_is_written_beside_the_graphs_and_referenced_by_the_manifest(int8_auto):
    out, _cache, result, _ = int8_auto
    manifest = read_manifest(out)
    assert manifest.precision_plan == {
        "file": PLAN_FILE,
        "sha256": sha256_file(out / PLAN_FILE),
    }
    data = json.loads((out / PLAN_FILE).read_text())
    entry = data["precisions"]["int8"]
    assert entry["calibration"]["sha256"] and entry["search"]["sha256"]
    assert entry["calibration"]["sha256"] != entry["search"]["sha256"]
    assert entry["gates"] == {
        "min_mask_iou": 0.985,
        "max_miou_drop_points": 1.0,
        "search_min_mask_iou": pytest.approx(1 - 0.015 * 0.75),  # the search's margin
        "search_max_miou_drop_points": pytest.approx(0.75),
    }
    assert entry["roles"]["mask_decoder"]["source_graph_sha256"] == (
        manifest.graphs["mask_decoder"].sha256
    )
    kept = len(result.plan.roles["mask_decoder"].kept)
    assert any(r["ok"] and r["kept"] == kept for r in entry["rounds"])  # the plan's round
    assert {r["step"] for r in entry["rounds"]} >= {"prefix"}
    assert not list(out.glob(".*tmp*")) and not list(out.glob(".quantize*"))


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    quantize_cli.register(parser.add_subparsers())
    return parser.parse_args(["quantize", *argv])


def test_plan_reuse_applies_the_same_nodes_without_searching(
    int8_auto, tiny_export, tmp_path, capsys
):
    src, cache, result, _ = int8_auto
    saved = tmp_path / "plan.json"
    saved.write_bytes((src / PLAN_FILE).read_bytes())
    out = copy_export(tiny_export, tmp_path / "e")
    argv = [str(out), "--precision", "int8", "--plan", str(saved), "--calib-size", "6"]
    argv += ["--eval-size", "8", "--keep-fp32", *SPLIT_FP32, "--quiet", "--latency-runs", "0"]
    argv += ["--min-mask-iou", "0.985", "--max-miou-drop", "1.0", "--cache-dir", str(cache)]
    argv += ["--json", str(tmp_path / "r.json")]
    args = _parse(argv)
    assert args.handler(args) == 0
    text = capsys.readouterr().out
    assert f"reusing {saved}" in text and "search took" not in text
    report = json.loads((tmp_path / "r.json").read_text())
    (graph,) = report["graphs"]
    # the plan's nodes, then the ones INT8 never takes (the decoder's attention)
    fixed = decoder_attention_matmuls(onnx.load(out / "mask_decoder.onnx"), "mask_decoder")
    assert fixed and not set(fixed) & set(result.plan.roles["mask_decoder"].nodes)
    assert graph["detail"]["excluded"] == [*result.plan.roles["mask_decoder"].nodes, *fixed]
    assert read_plan(out / PLAN_FILE, "int8").roles["mask_decoder"].nodes == (
        result.plan.roles["mask_decoder"].nodes
    )
    assert report["floor"]["max_miou_drop_points"] == 1.0


def test_plan_for_another_graph_or_precision_is_refused(int8_auto, tiny_export, tmp_path):
    src, cache, *_ = int8_auto
    out = copy_export(tiny_export, tmp_path / "e")
    opts = _options("int8", cache, plan=src / PLAN_FILE, keep_fp32=SPLIT_FP32)
    with pytest.raises(ConfigError, match="no fp16 plan"):
        run_quantize(out, dataclasses.replace(opts, precision="fp16"), log=_quiet)
    other = _with_overflow(copy_export(tiny_export, tmp_path / "other"))
    with pytest.raises(ConfigError, match="searched on another mask_decoder graph"):
        run_quantize(other, opts, log=_quiet)
    with pytest.raises(ConfigError, match="--auto searches a plan and --plan reuses one"):
        run_quantize(out, dataclasses.replace(opts, auto=True), log=_quiet)


def test_tampered_plan_is_refused_and_plain_rerun_drops_the_stale_entry(int8_auto, tmp_path):
    src, cache, *_ = int8_auto
    out = copy_export(src, tmp_path / "e")
    opts = _options("int8", cache, keep_fp32=SPLIT_FP32)
    plan = out / PLAN_FILE
    plan.write_text(plan.read_text().replace('"kept"', '"kept" ', 1))
    with pytest.raises(ArtifactError, match="changed since it was written"):
        run_quantize(out, opts, log=_quiet)
    copy_export(src, tmp_path / "e2")
    out = tmp_path / "e2"
    run_quantize(out, opts, log=_quiet)  # plain INT8 again: the old plan no longer applies
    assert read_manifest(out).precision_plan == {}
    assert not (out / PLAN_FILE).exists()


# ------------------------------------------------------------------------------- gates
def test_gates_are_in_stated_units(tmp_path):
    args = _parse([str(tmp_path), "--precision", "int8", "--max-miou-drop", "0.2"])
    opts = quantize_cli._options(args)
    assert opts.floor.max_miou_drop == pytest.approx(0.002)  # 0.2 points
    assert opts.floor.max_miou_drop_points == pytest.approx(0.2)
    assert opts.floor.min_mask_iou == 0.90  # the non-auto INT8 default is unchanged
    auto = quantize_cli._options(_parse([str(tmp_path), "--precision", "fp16", "--auto"]))
    assert auto.floor == AUTO_FLOORS["fp16"] == Floor(0.999, 0.002)
    int8 = quantize_cli._options(_parse([str(tmp_path), "--precision", "int8", "--auto"]))
    assert int8.floor == AUTO_FLOORS["int8"] == Floor(0.99, 0.002)
    bf16 = quantize_cli._options(_parse([str(tmp_path), "--precision", "bf16"]))
    assert bf16.floor == Floor(0.99, 0.005)
    assert (auto.calib.split, auto.calib.size) == ("train", 64)  # --auto calibrates fp16 too
    assert (auto.search.split, auto.search.size) == ("val", 32)
    assert auto.search.seed != auto.eval.seed  # search pairs are not the verdict's pairs
    with pytest.raises(SystemExit):
        _parse([str(tmp_path), "--precision", "int8", "--max-miou-drop", "150"])
    with pytest.raises(SystemExit):
        _parse([str(tmp_path), "--precision", "int8", "--auto", "--plan", "p.json"])
    parser = argparse.ArgumentParser()
    quantize_cli.register(parser.add_subparsers())
    sub = parser._subparsers._group_actions[0].choices["quantize"]  # noqa: SLF001
    text = " ".join(sub.format_help().split())
    assert "mIoU POINTS, 0.2 = 0.2 points" in text
    assert "pooled mask IoU vs the FP32 masks, fraction in [0, 1]" in text
    assert "mask IoU >= 0.999 for fp16, 0.99 for int8; mIoU drop <= 0.2 points" in text
    assert Floor(0.99, 0.002).to_dict()["max_miou_drop_points"] == pytest.approx(0.2)


def test_logit_error_gate_is_relative_and_optional(tmp_path):
    from dit_deploy.precision.verify import LayoutReport

    report = LayoutReport("split", 4, 0.013, 0.002, 0.26, 1.0, 1.0, 0.02, 0.02, 0.02, 0.02)
    assert report.check(Floor(0.99, 0.002)).ok  # masks unchanged: the mask gates pass
    failed = report.check(Floor(0.99, 0.002, max_logit_error=0.01))
    assert not failed.ok and "max logit error 5.00% of the FP32 range > 1.00%" in failed.failures[0]
    assert report.check(Floor(0.99, 0.002, max_logit_error=0.06)).ok
    args = _parse([str(tmp_path), "--precision", "int8", "--auto", "--max-logit-error", "0.01"])
    assert quantize_cli._options(args).floor == Floor(0.99, 0.002, 0.01)


def test_a_role_with_every_node_kept_stays_fp32():
    from dit_deploy.precision.plan import KeptNode, RolePlan

    kept = [KeptNode(f"n{i}", "MatMul", "INT8 sensitivity", 0.1) for i in range(3)]
    assert RolePlan("sha", kept, 0.0, 10.0, quantizable=3).all_kept
    assert not RolePlan("sha", kept[:2], 4.0, 10.0, quantizable=3).all_kept
    assert not RolePlan("sha", kept).all_kept  # FP16 plans: no quantizable count


def test_the_printed_plan_shows_the_largest_kept_nodes_and_counts_the_rest():
    """A plan keeping 40 nodes prints the 5 largest by FLOPs per graph and one line naming
    how many more the plan file holds; ``--verbose`` (limit None) prints every one."""
    from dit_deploy.precision.plan import KeptNode, PrecisionPlan, RolePlan

    kept = [KeptNode(f"mm{i}", "MatMul", "INT8 sensitivity", 0.01, float(i)) for i in range(40)]
    plan = PrecisionPlan("int8", "auto", {}, {}, {}, {"dit_fused": RolePlan("ab", kept, 1, 2)})
    short = quantize_cli.format_plan(plan, quantize_cli.PLAN_LINES)
    assert short[0] == "dit_fused: 40 node(s) kept unquantized"
    assert [line.split()[0] for line in short[1:6]] == ["mm39", "mm38", "mm37", "mm36", "mm35"]
    assert "... and 35 smaller one(s): every node is in precision_plan.json" in short[6]
    assert len(quantize_cli.format_plan(plan)) == 1 + 40 + 1  # + the INT8 share line
