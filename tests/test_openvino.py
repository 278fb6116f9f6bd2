"""OpenVINO backend on the tiny export: pinned FP32 against ONNX Runtime, INT8 from our Q/DQ
graph, BF16 as a verified execution precision recorded in the manifest (and refused on a CPU
without BF16), compiled-model caching, thread/stream settings, and a runtime that imports
without openvino."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from cpu_kinds import INT8_MAX_REL_LOGIT_ERROR, OPENVINO_INT8_SIGN_AGREEMENT, threshold
from test_cpp_runtime import cpp_build  # noqa: F401  (fixture: builds cpp/ once, or skips)

from dit_deploy.errors import (
    BackendUnavailableError,
    ConfigError,
    PrecisionUnavailableError,
)
from dit_deploy.precision.pipeline import QuantizeFailed, QuantizeOptions, run_quantize
from dit_deploy.precision.samples import PairSource
from dit_deploy.precision.verify import Floor
from dit_deploy.runtime import Predictor, read_manifest
from dit_deploy.runtime.backends import open_backend
from tests.conftest import skip_or_require

ov = pytest.importorskip("openvino")
from dit_deploy.runtime.backends import openvino as ov_backend  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
TEXTS = ["the left man", "red cup", "a dog on the right", "the tall tree"]


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from dit_deploy.exporters.onnx_export import run_export
    from dit_deploy.model.dit_model import DITModel

    model = DITModel.from_checkpoint(
        FIXTURES / "authors" / "layer_wise.pth",
        config="layer_wise_tiny",
        vocab=FIXTURES / "tiny_vocab.txt",
    )
    out = tmp_path_factory.mktemp("ov") / "tiny"
    run_export(model, out, layout="both", log=lambda *_: None)
    return out


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Compiled blobs go to a per-test directory, never the user's ~/.cache."""
    monkeypatch.setenv(ov_backend.CACHE_ENV, str(tmp_path / "ov_cache"))


def _feeds(predictor: Predictor) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    images = [(rng.random((70 + 9 * i, 110, 3)) * 255).astype(np.uint8) for i in range(4)]
    feeds, _ = predictor.prepare(images, TEXTS)
    return feeds


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _no_bf16(monkeypatch) -> None:
    monkeypatch.setattr(ov_backend, "cpu_capabilities", lambda core=None: ["FP32", "INT8", "BIN"])


def _has_bf16() -> bool:
    return ov_backend.bf16_unavailable_reason() is None


@pytest.mark.parametrize("layout", ["fused", "split"])
def test_pinned_fp32_matches_onnxruntime(tiny_export, layout):
    ort = Predictor(tiny_export, layout=layout)
    vino = Predictor(tiny_export, backend="openvino", layout=layout, threads=1)
    for backend in vino.graphs.values():
        # pinned, whatever this CPU's default (BF16 where it has BF16 units)
        assert backend.compiled_property("INFERENCE_PRECISION_HINT") == "f32"
    feeds = _feeds(ort)
    ref, got = ort.low_res_logits(feeds), vino.low_res_logits(feeds)
    assert got.shape == ref.shape == (4, 1, 24, 24) and got.dtype == np.float32
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    assert rel < 1e-4, rel
    # the whole call: the same masks
    pairs = [(np.full((60, 80, 3), 40 * i, np.uint8), t) for i, t in enumerate(TEXTS)]
    for a, b in zip(ort.predict_batch(pairs), vino.predict_batch(pairs), strict=True):
        assert a.mask.shape == b.mask.shape and (a.mask == b.mask).mean() > 0.999


def test_metadata_threads_streams_and_bad_settings(tiny_export):
    graph = tiny_export / "dit_fused.onnx"
    backend = open_backend("openvino", graph, threads=2, streams=2, hint="THROUGHPUT")
    assert [s.name for s in backend.inputs] == ["input_ids", "attention_mask", "image"]
    assert backend.inputs[2].dtype == "float32" and backend.inputs[2].shape[0] == "batch"
    assert backend.inputs[0].dtype == "int64"
    assert [s.name for s in backend.outputs] == ["low_res_logits", "iou_pred"]
    assert backend.compiled_property("INFERENCE_NUM_THREADS") == "2"
    assert backend.compiled_property("NUM_STREAMS") == "2"
    with pytest.raises(ConfigError, match="streams"):
        open_backend("openvino", graph, streams=0)
    with pytest.raises(ConfigError, match="hint"):
        open_backend("openvino", graph, hint="FAST")
    with pytest.raises(BackendUnavailableError, match=r"runs on the CPU here \(--device cpu\)"):
        open_backend("openvino", graph, device="cuda")
    with pytest.raises(Exception, match="graph not found"):
        open_backend("openvino", tiny_export / "nope.onnx")


def test_a_process_with_a_share_of_the_cores_does_not_pin_them(tiny_export, monkeypatch):
    """OpenVINO pins a process's threads from the first core on: processes side by side
    (batch workers, Triton instances of 1 thread) would share one core. Pinned only where
    the process has every core."""
    import os

    graph = tiny_export / "dit_fused.onnx"
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    share = open_backend("openvino", graph, threads=1, cache_dir=False)
    assert share.compiled_property("ENABLE_CPU_PINNING") in ("NO", "False", "false")
    assert share.config["ENABLE_CPU_PINNING"] == "False"
    for threads in (None, 4):
        whole = open_backend("openvino", graph, threads=threads, cache_dir=False)
        assert "ENABLE_CPU_PINNING" not in whole.config


def test_concurrent_calls_agree(tiny_export):
    predictor = Predictor(tiny_export, backend="openvino", layout="fused", threads=1)
    feeds = _feeds(predictor)
    expected = predictor.low_res_logits(feeds)
    results: list[np.ndarray] = []

    def work():
        for _ in range(3):
            results.append(predictor.low_res_logits(feeds))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 12 and all(np.array_equal(r, expected) for r in results)


def test_compiled_model_cache(tiny_export, tmp_path):
    cache = tmp_path / "blobs"
    first = open_backend("openvino", tiny_export / "dit_fused.onnx", cache_dir=cache)
    assert first.cache_dir == cache and first.config["CACHE_DIR"] == str(cache)
    blobs = sorted(cache.glob("*.blob"))
    assert blobs, list(cache.iterdir())
    second = open_backend("openvino", tiny_export / "dit_fused.onnx", cache_dir=cache)
    assert sorted(cache.glob("*.blob")) == blobs  # reused, not compiled again
    feeds = _feeds(Predictor(tiny_export, layout="fused"))
    np.testing.assert_array_equal(
        first.run(feeds)["low_res_logits"], second.run(feeds)["low_res_logits"]
    )
    off = open_backend("openvino", tiny_export / "dit_fused.onnx", cache_dir=False)
    assert off.cache_dir is None and "CACHE_DIR" not in off.config
    default = open_backend("openvino", tiny_export / "dit_fused.onnx")
    assert default.cache_dir == ov_backend.default_cache_dir() == tmp_path / "ov_cache"


def test_int8_from_our_qdq_graph(tiny_export, tmp_path):
    out = _copy(tiny_export, tmp_path / "tiny")
    opts = QuantizeOptions(
        precision="int8",
        calib=PairSource(None, "train", 8),
        eval=PairSource(None, "val", 8, seed=1),
        cache_dir=tmp_path / "calib",
        latency_runs=0,
    )
    run_quantize(out, opts, log=lambda *_: None)
    ort = Predictor(out, layout="fused", precision="int8")
    vino = Predictor(out, backend="openvino", layout="fused", precision="int8")
    fp32 = Predictor(out, layout="fused")
    feeds = _feeds(ort)
    ref, got, full = (
        ort.low_res_logits(feeds),
        vino.low_res_logits(feeds),
        fp32.low_res_logits(feeds),
    )
    span = np.abs(full).max()
    # OpenVINO's INT8 kernels round differently from ONNX Runtime's, but both stay as close
    # to FP32 as ONNX Runtime's INT8 is
    assert np.abs(got - full).max() <= threshold(INT8_MAX_REL_LOGIT_ERROR) * span  # 0.152
    assert np.abs(got - ref).mean() < 0.01 * span  # measured 0.0018 on both CPU kinds
    assert ((got > 0) == (ref > 0)).mean() > threshold(OPENVINO_INT8_SIGN_AGREEMENT)


def test_bf16_is_verified_recorded_and_runs(tiny_export, tmp_path):
    if not _has_bf16():  # .ci/run requires it where /proc/cpuinfo shows BF16 units
        skip_or_require("DIT_REQUIRE_BF16", "this CPU has no BF16 units (see the refusal test)")
    out = _copy(tiny_export, tmp_path / "tiny")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix == ".onnx"}
    eval_pairs = PairSource(None, "val", 12, seed=1)
    # the tiny test weights leave most pixels near the threshold: an impossible floor fails
    with pytest.raises(QuantizeFailed, match="mask agreement"):
        run_quantize(
            out,
            QuantizeOptions("bf16", eval=eval_pairs, floor=Floor(1.0, 0.0), latency_runs=0),
            log=lambda *_: None,
        )
    assert "bf16" not in read_manifest(out).precisions
    result = run_quantize(
        out,
        QuantizeOptions("bf16", eval=eval_pairs, floor=Floor(0.97, 0.01), latency_runs=1),
        log=lambda *_: None,
    )
    assert result.written and {r.layout for r in result.layouts} == {"split", "fused"}
    for report in result.layouts:
        assert 0.97 <= report.mask_iou < 1.0  # really BF16: not bit-equal to FP32
        assert 0 < report.logits_max_abs < 0.1 * report.logits_ref_max
    # no new graph file: the manifest points at the FP32 graphs with an execution precision
    assert {p.name for p in out.iterdir() if p.suffix == ".onnx"} == set(before)
    manifest = read_manifest(out)
    for role, spec in manifest.precisions["bf16"].items():
        fp32 = manifest.graphs[role]
        assert (spec.file, spec.sha256) == (fp32.file, fp32.sha256)
        assert (spec.precision, spec.execution) == ("bf16", "openvino-bf16")
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["precisions"]["bf16"]["dit_fused"]["execution"] == "openvino-bf16"
    assert all("execution" not in g for g in raw["graphs"].values())
    (record,) = manifest.verified["bf16"]["on"]  # verified in OpenVINO, on BF16 units
    assert (record["backend"], record["numerics"]) == ("openvino", "x86-bf16")

    bf16 = Predictor(out, backend="openvino", layout="fused", precision="bf16")
    assert bf16.verified_here == "run"
    assert bf16.graphs["dit_fused"].compiled_property("INFERENCE_PRECISION_HINT") == "bf16"
    fp32 = Predictor(out, backend="openvino", layout="fused")
    feeds = _feeds(fp32)
    ref, got = fp32.low_res_logits(feeds), bf16.low_res_logits(feeds)
    assert 0 < np.abs(got - ref).max() < 0.1 * np.abs(ref).max()
    with pytest.raises(PrecisionUnavailableError, match="backend='openvino'"):
        Predictor(out, backend="onnxruntime", precision="bf16")


def test_bf16_refused_on_a_cpu_without_bf16(tiny_export, tmp_path, monkeypatch):
    _no_bf16(monkeypatch)
    with pytest.raises(PrecisionUnavailableError, match="no BF16 units.*AVX512-BF16 or AMX"):
        open_backend("openvino", tiny_export / "dit_fused.onnx", execution="openvino-bf16")
    out = _copy(tiny_export, tmp_path / "tiny")
    manifest_before = (out / "manifest.json").read_bytes()
    with pytest.raises(PrecisionUnavailableError, match="no BF16 units"):
        run_quantize(
            out,
            QuantizeOptions("bf16", eval=PairSource(None, "val", 4, seed=1), latency_runs=0),
            log=lambda *_: None,
        )
    assert (out / "manifest.json").read_bytes() == manifest_before
    assert not [p for p in out.iterdir() if p.name.startswith(".quantize")]
    # the CLI: one line, non-zero
    from dit_deploy.cli import verb_main

    quantize_main = verb_main("quantize")

    assert quantize_main([str(out), "--precision", "bf16", "--eval-size", "4", "--quiet"]) == 1


def test_unknown_execution_is_refused(tiny_export):
    with pytest.raises(PrecisionUnavailableError, match="unknown to this dit-deploy"):
        open_backend("openvino", tiny_export / "dit_fused.onnx", execution="openvino-fp8")
    with pytest.raises(PrecisionUnavailableError, match="execution mode of openvino"):
        open_backend("onnxruntime", tiny_export / "dit_fused.onnx", execution="openvino-bf16")


def test_runtime_imports_and_refuses_cleanly_without_openvino(tiny_export):
    code = f"""
import sys
sys.modules["openvino"] = None  # as if not installed
from dit_deploy.runtime import Predictor
from dit_deploy.errors import BackendUnavailableError
Predictor({str(tiny_export)!r}, layout="fused")  # onnxruntime is unaffected
try:
    Predictor({str(tiny_export)!r}, backend="openvino")
except BackendUnavailableError as exc:
    print("refused:", exc)
assert "torch" not in sys.modules
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "refused: openvino is not installed: pip install 'dit-deploy[openvino]'" in proc.stdout


@pytest.fixture
def bf16_manifest_copy(tiny_export, tmp_path) -> Path:
    """A copy of the export whose manifest lists bf16 as the pipeline records it (written
    here directly, so no BF16 CPU is needed)."""
    out = _copy(tiny_export, tmp_path / "tiny")
    data = json.loads((out / "manifest.json").read_text())
    data["precisions"] = {
        "bf16": {
            role: {**g, "precision": "bf16", "execution": "openvino-bf16"}
            for role, g in data["graphs"].items()
        }
    }
    (out / "manifest.json").write_text(json.dumps(data))
    return out


def test_onnxruntime_and_tensorrt_refuse_an_execution_precision(bf16_manifest_copy):
    for backend in ("onnxruntime", "tensorrt"):
        with pytest.raises(PrecisionUnavailableError, match="backend='openvino'"):
            Predictor(bf16_manifest_copy, backend=backend, precision="bf16")


def test_cpp_runtime_refuses_an_execution_precision(
    cpp_build,  # noqa: F811  (the imported fixture)
    bf16_manifest_copy,
    tmp_path,
):
    """The C++ runtime runs ONNX Runtime: it must not run a bf16 entry silently as FP32. Its
    Manifest::graph refuses the entry (C++ unit test ``execution_precision_refused``, run
    here); the CLI refuses the option before reading the manifest."""
    unit = subprocess.run([str(cpp_build / "test_manifest")], capture_output=True, text=True)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "execution_precision_refused" in unit.stdout + unit.stderr
    image = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (90, 120, 30)).save(image)
    cmd = [str(cpp_build / "dit_infer"), str(bf16_manifest_copy), str(image), "the cup"]
    proc = subprocess.run(
        [*cmd, "--out", str(tmp_path / "m.png"), "--precision", "bf16"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "--precision must be fp32, fp16 or int8" in proc.stderr
    ok = subprocess.run([*cmd, "--out", str(tmp_path / "m.png")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr  # fp32 from the same manifest still runs


def test_port_names_are_the_graphs_own_names():
    """OpenVINO may merge a graph output with the exporter-internal tensor feeding it; the
    chain connects graphs by the ONNX names, so the backend must report those."""
    from dit_deploy.runtime.backends.openvino import _graph_name

    assert _graph_name({"/neck/neck.3/Mul_output_0", "image_embedding"}) == "image_embedding"
    assert _graph_name({"low_res_logits"}) == "low_res_logits"
    assert _graph_name({"/a/b_output_0"}) == "/a/b_output_0"
