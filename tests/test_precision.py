"""FP16/INT8 graphs of the tiny export: produced, structurally right, verified against FP32 on
the CPU, nothing written below the floor; GPU tests (marked ``gpu``) build each precision
with TensorRT and compare with ONNX Runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from cpu_kinds import INT8_MAX_REL_LOGIT_ERROR, INT8_MIN_MASK_IOU, threshold
from gpu_boundary import gpu_boundary
from onnx import TensorProto, numpy_helper

from dit_deploy.cli import verb_main
from dit_deploy.errors import ArtifactError, ConfigError
from dit_deploy.precision.graph_checks import fp16_problems, int8_problems
from dit_deploy.precision.int8 import (
    Int8Options,
    batched_constant_matmuls,
    decoder_attention_matmuls,
)
from dit_deploy.precision.pipeline import QuantizeFailed, QuantizeOptions, run_quantize
from dit_deploy.precision.samples import PairSource
from dit_deploy.precision.verify import Floor
from dit_deploy.runtime import Predictor, read_manifest
from dit_deploy.runtime.verified_on import agreement

FIXTURES = Path(__file__).parent / "fixtures"
ROLES = ("text_encoder", "dit_encoder", "mask_decoder", "dit_fused")
# measured on the tiny random model (docs/benchmarks.md, "Precision"): fp16 mask IoU 0.999,
# max |d logits| 0.04; INT8's thresholds live in cpu_kinds.py (one place for both CPU kinds)
FP16_MIN_MASK_IOU, FP16_MAX_LOGIT_ERR = 0.99, 0.15

quantize_main = verb_main("quantize")


@pytest.fixture(scope="module")
def fp32_export(tiny_export) -> Path:
    return tiny_export


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _options(precision: str, cache: Path, **kw) -> QuantizeOptions:
    return QuantizeOptions(
        precision=precision,
        calib=PairSource(None, "train", 12) if precision == "int8" else None,
        eval=PairSource(None, "val", 12, seed=1),
        cache_dir=cache,
        latency_runs=2,
        **kw,
    )


@pytest.fixture(scope="module")
def quantized(fp32_export, tmp_path_factory) -> tuple[Path, dict]:
    """One export with both precisions added, and their results."""
    out = _copy(fp32_export, tmp_path_factory.mktemp("q") / "tiny")
    cache = tmp_path_factory.mktemp("cache")
    results = {
        p: run_quantize(out, _options(p, cache), log=lambda *_: None) for p in ("fp16", "int8")
    }
    return out, results


def test_both_precisions_written_with_manifest_and_metadata(quantized):
    out, results = quantized
    manifest = read_manifest(out)
    assert sorted(manifest.precisions) == ["fp16", "int8"]
    for precision, result in results.items():
        assert result.written
        for role in ROLES:
            spec = manifest.graph(role, precision)
            assert spec.file == f"{role}.{precision}.onnx" and spec.precision == precision
            meta = {p.key: p.value for p in onnx.load(out / spec.file).metadata_props}
            assert meta["dit.precision"] == precision
            assert meta["dit.graph"] == role  # the FP32 graph's metadata is kept
            assert meta["dit.source_graph_sha256"] == manifest.graphs[role].sha256
            assert spec.inputs == manifest.graphs[role].inputs  # FP32 I/O, same names


def test_fp16_matches_fp32(quantized):
    _, results = quantized
    for report in results["fp16"].layouts:
        assert report.mask_iou >= FP16_MIN_MASK_IOU, report
        assert report.logits_max_abs <= FP16_MAX_LOGIT_ERR, report
        assert abs(report.miou_change) <= 0.01


def test_int8_matches_fp32(quantized):
    _, results = quantized
    for report in results["int8"].layouts:
        assert report.mask_iou >= threshold(INT8_MIN_MASK_IOU), report
        assert report.logits_rel_error <= threshold(INT8_MAX_REL_LOGIT_ERROR), report
        assert report.latency_ms > 0 and report.latency_fp32_ms > 0


def test_fp16_graph_properties(quantized):
    out, _ = quantized
    for role in ROLES:
        model = onnx.load(out / f"{role}.fp16.onnx")
        assert fp16_problems(model, ("LayerNormalization", "Softmax")) == []
        for value in [*model.graph.input, *model.graph.output]:
            assert value.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.INT64)
        types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
        islands = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
        assert islands
        # attention's position-bias matmuls (batched constant tables) compute in FP32 too
        tables = set(batched_constant_matmuls(model))
        assert bool(tables) == (role in ("dit_encoder", "dit_fused")), role
        islands += [n for n in model.graph.node if n.name in tables]
        for node in islands:  # computes in FP32: FP32 in, FP32 out
            assert types.get(node.input[0], TensorProto.FLOAT) == TensorProto.FLOAT, node.name
            assert types.get(node.output[0], TensorProto.FLOAT) == TensorProto.FLOAT, node.name
        weights = [t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT16]
        assert weights, "weights should be FP16"


def test_int8_graph_properties(quantized):
    out, _ = quantized
    for role in ROLES:
        model = onnx.load(out / f"{role}.int8.onnx")
        assert int8_problems(model) == []
        inits = {t.name: t for t in model.graph.initializer}
        ops = [n.op_type for n in model.graph.node]
        assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
        consumers = {i: n for n in model.graph.node for i in n.input}
        per_channel = 0
        for node in model.graph.node:
            if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                continue
            zp = inits[node.input[2]]
            assert zp.data_type == TensorProto.INT8  # signed
            assert not numpy_helper.to_array(zp).any()  # symmetric: zero points 0
            if node.op_type == "DequantizeLinear" and node.input[0] in inits:
                w = inits[node.input[0]]
                assert w.data_type == TensorProto.INT8  # no INT32 bias dequantisation
                user = consumers[node.output[0]]
                scale = numpy_helper.to_array(inits[node.input[1]])
                if scale.ndim == 1 and scale.size > 1:
                    per_channel += 1
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                    assert axis == {"Conv": 0, "MatMul": 1}.get(user.op_type, axis)
                    assert scale.size == w.dims[axis]
        assert per_channel > 0
        # only MatMul/Gemm/Conv are quantized: nothing else reads a DequantizeLinear output
        dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
        readers = {n.op_type for n in model.graph.node if set(n.input) & dq_out}
        assert readers <= {"MatMul", "Gemm", "Conv"}, readers
        # attention's position-bias matmuls (tables with batch dims) stay FP32
        tables = batched_constant_matmuls(model)
        assert bool(tables) == (role in ("dit_encoder", "dit_fused")), (role, tables)
        assert not any(set(n.input) & dq_out for n in model.graph.node if n.name in tables)
        # the mask decoder's attention and final mask product stay FP32; the image encoder's
        # attention is INT8 (both operands through Q/DQ)
        decoder = decoder_attention_matmuls(onnx.load(out / f"{role}.onnx"), role)
        assert bool(decoder) == (role in ("mask_decoder", "dit_fused")), (role, decoder)
        assert not any(set(n.input) & dq_out for n in model.graph.node if n.name in decoder)
        act_dq = {
            n.output[0]
            for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] not in inits
        }
        both_int8 = [
            n.name for n in model.graph.node if n.op_type == "MatMul" and set(n.input) <= act_dq
        ]
        if role in ("dit_encoder", "dit_fused"):
            assert both_int8 and not set(both_int8) & set(decoder), (role, both_int8)
        if role == "dit_fused":
            split = decoder_attention_matmuls(onnx.load(out / "mask_decoder.onnx"), "mask_decoder")
            assert decoder == ["/decoder" + name for name in split]


def test_predictor_runs_each_precision(quantized):
    out, _ = quantized
    pairs = [(p.image, p.text) for p in PairSource(None, "val", 2)]
    ref = Predictor(out).predict_batch(pairs)
    floors = {"fp16": FP16_MIN_MASK_IOU, "int8": threshold(INT8_MIN_MASK_IOU)}
    for precision, floor in floors.items():
        got = Predictor(out, precision=precision, layout="split").predict_batch(pairs)
        inter = union = 0
        for a, b in zip(ref, got, strict=True):
            assert a.mask.shape == b.mask.shape
            inter += int(np.logical_and(a.mask, b.mask).sum())
            union += int(np.logical_or(a.mask, b.mask).sum())
        assert union > 0 and inter / union >= floor, (precision, inter / union)
    with pytest.raises(ArtifactError, match="no TensorRT engine dit_fused.int8.engine"):
        Predictor(out, backend="tensorrt", precision="int8")


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_below_floor_exits_nonzero_and_writes_nothing(fp32_export, tmp_path, capsys):
    out = _copy(fp32_export, tmp_path / "e")
    before = _snapshot(out)
    impossible = Floor(min_mask_iou=1.01, max_miou_drop=0.0)
    with pytest.raises(QuantizeFailed, match="nothing written") as info:
        run_quantize(out, _options("fp16", tmp_path / "c", floor=impossible), log=lambda *_: None)
    assert not info.value.result.written and info.value.result.layouts
    assert _snapshot(out) == before  # no graph, no manifest change, no temp directory
    report = tmp_path / "r.json"
    argv = [str(out), "--precision", "int8", "--calib-size", "6", "--eval-size", "6"]
    argv += ["--min-mask-iou", "1.0", "--max-miou-drop", "0", "--quiet", "--latency-runs", "0"]
    argv += ["--cache-dir", str(tmp_path / "c"), "--json", str(report)]
    assert quantize_main(argv) == 1
    assert "below the accuracy floor" in capsys.readouterr().err
    assert json.loads(report.read_text())["written"] is False
    assert _snapshot(out) == before


def test_cli_writes_table_and_json_and_reuses_calibration_cache(fp32_export, tmp_path, capsys):
    out = _copy(fp32_export, tmp_path / "e")
    argv = [str(out), "--precision", "int8", "--calib-size", "6", "--eval-size", "6"]
    argv += ["--keep-fp32", "text_encoder", "--quiet", "--latency-runs", "1"]
    argv += ["--cache-dir", str(tmp_path / "c"), "--json", str(tmp_path / "r.json")]
    assert quantize_main(argv) == 0
    text = capsys.readouterr().out
    assert "int8 vs fp32" in text and "mask IoU" in text and "ok" in text
    first = json.loads((tmp_path / "r.json").read_text())
    assert [g["role"] for g in first["graphs"]] == ["dit_encoder", "mask_decoder", "dit_fused"]
    assert not any(g["detail"]["cache_hit"] for g in first["graphs"])
    manifest = read_manifest(out)
    assert manifest.graph("text_encoder", "int8").file == "text_encoder.onnx"  # kept FP32
    assert quantize_main(argv) == 0  # again: ranges come from the cache
    second = json.loads((tmp_path / "r.json").read_text())
    assert all(g["detail"]["cache_hit"] for g in second["graphs"])


def test_json_to_stdout_is_the_report_alone_with_a_printing_calibrator(
    fp32_export, tmp_path, capsys
):
    """``--json -``: ONNX Runtime's entropy calibrator prints its progress; that goes to
    stderr, and stdout parses as the JSON report."""
    out = _copy(fp32_export, tmp_path / "e")
    argv = [str(out), "--precision", "int8", "--calib-size", "4", "--eval-size", "4"]
    argv += ["--method", "entropy", "--keep-fp32", "text_encoder", "--quiet"]
    argv += ["--latency-runs", "0", "--min-mask-iou", "0", "--max-miou-drop", "100"]
    argv += ["--cache-dir", str(tmp_path / "c"), "--json", "-"]
    assert quantize_main(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["precision"] == "int8"
    assert "histogram" in captured.err.lower() or "threshold" in captured.err.lower()


def test_an_op_type_the_graphs_lack_is_refused_before_any_work(fp32_export, tmp_path, capsys):
    out = _copy(fp32_export, tmp_path / "e")
    before = _snapshot(out)
    argv = [str(out), "--precision", "int8", "--op-types", "MatMul", "matmul", "--quiet"]
    assert quantize_main([*argv, "--cache-dir", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert "--op-types matmul: no such op in" in err and "case-sensitive" in err, err
    assert _snapshot(out) == before and not (tmp_path / "c").exists()


def test_exclude_leaves_node_unquantized_and_unknown_names_are_refused(fp32_export, tmp_path):
    out = _copy(fp32_export, tmp_path / "e")
    graph = onnx.load(out / "mask_decoder.onnx")
    target = next(n.name for n in graph.graph.node if n.op_type == "MatMul")
    bad = Int8Options(exclude=("no/such/node",))
    with pytest.raises(ConfigError, match="no such node"):
        run_quantize(out, _options("int8", tmp_path / "c", int8=bad), log=lambda *_: None)
    opts = _options("int8", tmp_path / "c", int8=Int8Options(exclude=(target,)))
    opts.keep_fp32 = ("text_encoder", "dit_encoder", "dit_fused")
    run_quantize(out, opts, log=lambda *_: None)
    q = onnx.load(out / "mask_decoder.int8.onnx")
    node = next(n for n in q.graph.node if n.name == target)
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    assert all(producers.get(i) != "DequantizeLinear" for i in node.input)


def test_manifest_without_precisions_reads_and_writes_unchanged(fp32_export):
    manifest = read_manifest(fp32_export)
    assert manifest.precisions == {}
    assert "precisions" not in manifest.to_dict()
    with pytest.raises(ArtifactError, match="dit-deploy quantize EXPORT_DIR --precision fp16"):
        manifest.graph("dit_encoder", "fp16")


# ----------------------------------------------------------------- engines (no GPU)
def test_to_trt_without_gpu_exits_1_with_the_command(quantized, monkeypatch, capsys):
    """Engine sidecars and the build itself: tests/test_engine_sidecar.py, test_engines.py."""
    from dit_deploy.engines import build

    to_trt_main = verb_main("engines")

    out, _ = quantized
    monkeypatch.setattr(build, "gpu_unavailable_reason", lambda: "no NVIDIA GPU (test)")
    assert to_trt_main([str(out), "--precision", "int8", "--max-batch", "4"]) == 1
    err = capsys.readouterr().err
    assert "no NVIDIA GPU (test)" in err
    assert f"dit-deploy engines {out} --precision int8 --max-batch 4" in err
    assert to_trt_main([str(out), "--max-batch", "2", "--opt-batch", "4"]) == 1  # checked first


# --------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_engine_matches_onnxruntime_cpu(quantized, precision):
    from dit_deploy.engines import EngineOptions, build_engines
    from dit_deploy.engines.build import plan

    out, _ = quantized
    options = EngineOptions(out, (precision,), max_batch=4)
    _, jobs = plan(options)  # every graph of this precision, both layouts, found
    assert {p for p, _, _ in jobs} == {precision} and len(jobs) == 4, jobs  # 3 split + fused
    pairs = [(p.image, p.text) for p in PairSource(None, "val", 3)]
    expected = {}
    for layout in ("split", "fused"):
        cpu = Predictor(out, precision=precision, layout=layout)
        feeds, _ = cpu.prepare(*zip(*pairs, strict=True))
        expected[layout] = feeds, cpu.low_res_logits(feeds)
    gpu_boundary()
    build_engines(options)
    for layout, (feeds, a) in expected.items():
        gpu = Predictor(out, backend="tensorrt", device="cuda", precision=precision, layout=layout)
        b = gpu.low_res_logits(feeds)
        if precision == "int8":
            # two INT8 implementations of one Q/DQ graph (not yet measured on a GPU): their
            # masks agree as each agrees with FP32 (tests/cpu_kinds.py), logits within the
            # INT8 error bound of the logit range
            assert agreement(b, a, 0.35) >= threshold(INT8_MIN_MASK_IOU)
            assert np.abs(a - b).max() <= threshold(INT8_MAX_REL_LOGIT_ERROR) * np.abs(a).max()
        else:
            assert np.abs(a - b).max() <= {"fp32": 1e-2, "fp16": 0.1}[precision]
        graphed = Predictor(
            out,
            backend="tensorrt",
            device="cuda",
            precision=precision,
            layout=layout,
            cuda_graph=True,
        )
        graphed.low_res_logits(feeds)  # captures
        assert np.abs(graphed.low_res_logits(feeds) - b).max() <= 1e-5  # replays
