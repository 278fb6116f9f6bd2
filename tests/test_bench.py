"""dit-bench: statistics on known samples, the report schema and the failure paths.
No test asserts a timing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dit_deploy.bench.report import markdown
from dit_deploy.bench.stats import measure, summarize
from dit_deploy.cli import bench_main as main
from dit_deploy.exporters.onnx_export import run_export
from dit_deploy.model.dit_model import DITModel
from dit_deploy.runtime.devices import gpu_unavailable_reason

FIXTURES = Path(__file__).parent / "fixtures"
TINY = [
    "--checkpoint",
    str(FIXTURES / "authors" / "layer_wise.pth"),
    "--config",
    "layer_wise_tiny",
    "--vocab",
    str(FIXTURES / "tiny_vocab.txt"),
]


def test_summarize_known_samples():
    s = summarize([0.001 * v for v in range(1, 11)])  # 1..10 ms
    assert s.n == 10 and s.min == pytest.approx(1.0) and s.max == pytest.approx(10.0)
    assert s.p50 == pytest.approx(5.5)
    assert s.p90 == pytest.approx(9.1)
    assert s.p99 == pytest.approx(9.91)
    assert s.mean == pytest.approx(5.5)
    assert s.std == pytest.approx(np.std(np.arange(1, 11), ddof=1))
    assert s.outliers == 0
    assert summarize([0.001] * 9 + [0.1]).outliers == 1  # reported, not dropped
    with pytest.raises(ValueError):
        summarize([])


def test_measure_respects_warmup_budget_and_sync():
    calls, syncs, now = [], [], [0.0]

    def clock():
        return now[0]

    def fn():
        calls.append(1)
        now[0] += 0.5  # every call "takes" 0.5 s

    samples = measure(
        fn,
        warmup=3,
        min_runs=2,
        max_runs=100,
        budget_s=2.0,
        synchronize=lambda: syncs.append(1),
        clock=clock,
    )
    assert len(samples) == 4 and all(s == pytest.approx(0.5) for s in samples)
    assert len(calls) == 7  # 3 warm-up + 4 timed
    assert len(syncs) == 5  # once after warm-up, then before every clock read
    assert len(measure(fn, warmup=0, min_runs=5, budget_s=0.0, clock=clock)) == 5


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    model = DITModel.from_checkpoint(
        FIXTURES / "authors" / "layer_wise.pth",
        config="layer_wise_tiny",
        vocab=FIXTURES / "tiny_vocab.txt",
    )
    out = tmp_path_factory.mktemp("bench") / "tiny"
    run_export(model, out, layout="fused", log=lambda *_: None)
    return out


def test_report_schema_and_files(tiny_export, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the bundled evaluation set is generated under ./runs
    monkeypatch.setenv("DIT_DEPLOY_OPENVINO_CACHE", str(tmp_path / "ov_cache"))
    code = main(
        [
            str(tiny_export),
            *TINY,
            "--limit",
            "4",
            "--batch",
            "1,2",
            "--budget",
            "0.05",
            "--rounds",
            "3",
            "--threads",
            "1",
            "--report-dir",
            str(tmp_path / "r"),
            "--json",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= {"model", "command", "data", "batches", "environment", "cells"}
    assert report["batches"] == [1, 2] and report["data"]["pairs"] == 4
    env = report["environment"]
    assert {"cpu", "cores", "threads", "gpus", "versions"} <= set(env)
    assert "torch" in env["versions"] and "onnxruntime" in env["versions"]
    cells = {c["label"]: c for c in report["cells"]}
    # the floors of this CPU, and each CPU cell's distance to its precision's floor
    floors = report["floors"]
    assert floors["isa"] == env["cpu_kernels"].split(" ")[0] and floors["threads"] == 1
    assert {"fp32", "int8"} <= set(floors["floor_ms"]) and float(floors["gflop"]["2"]) > 0
    for label in ("onnxruntime cpu fp32 (fused)", "openvino cpu fp32 (fused)"):
        for batch in ("1", "2"):
            lat = cells[label]["result"]["latency"][batch]
            assert lat["x_floor"] == pytest.approx(lat["p50"] / floors["floor_ms"]["fp32"][batch],
                                                   rel=0.01)  # fmt: skip
    ort = cells["onnxruntime cpu fp32 (fused)"]["result"]
    assert ort["status"] == "ok"
    assert set(ort["latency"]) == {"1", "2"}
    assert {"p50", "p90", "p99", "mean", "std", "outliers", "pairs_per_s"} <= set(
        ort["latency"]["1"]
    )
    assert {"decode+preprocess", "tokenize", "fused model", "postprocess"} == set(ort["stages_ms"])
    assert {"mIoU", "oIoU", "prec@0.5", "count"} <= set(ort["accuracy"]) and ort["accuracy"][
        "count"
    ] == 4
    # interleaved rounds: per-round medians, the speed-up over PyTorch with its spread
    assert report["rounds"] == 3 and report["baseline"] == "pytorch (as users run it)"
    one = ort["latency"]["1"]
    assert one["rounds"] == 3 and len(one["round_medians_ms"]) == 3
    assert one["speedup"]["rounds"] == 3 and one["speedup"]["median"] > 0
    assert isinstance(one["noisy"], list)
    assert "speedup" not in cells["pytorch (as users run it)"]["result"]["latency"]["1"]
    load = env["load_at_start"]
    assert len(load["loadavg"]) == 3 and load["cores"] >= 1 and "busy_processes" in load
    vino = cells["openvino cpu fp32 (fused)"]
    assert vino["result"]["status"] == "ok", vino["result"]
    assert vino["parity"]["max_abs"] < 1e-4 and vino["parity"]["mask_agreement"] >= 0.999
    assert "no int8 graphs" in cells["openvino cpu int8 (fused)"]["result"]["reason"]
    parity = cells["onnxruntime cpu fp32 (fused)"]["parity"]
    assert parity["max_abs"] < 1e-4 and parity["mask_agreement"] >= 0.999
    reference = cells["pytorch (as users run it)"]
    assert reference["parity"]["max_abs"] == 0.0
    # same inputs for every cell: the same accuracy where the logits agree (max |d| < 1e-4,
    # masks >= 0.999): every metric within 0.001 (a fraction: 0.1 points)
    ref_acc = reference["result"]["accuracy"]
    assert ref_acc["count"] == ort["accuracy"]["count"]
    for metric in ("mIoU", "oIoU", "prec@0.5"):
        assert ort["accuracy"][metric] == pytest.approx(ref_acc[metric], abs=1e-3), metric
    for name in ("report.json", "report.md", "latency_vs_batch.png", "accuracy_vs_latency.png"):
        assert (tmp_path / "r" / name).stat().st_size > 0
    md = markdown(report)
    assert "| onnxruntime cpu fp32 (fused) |" in md and "## Environment" in md
    assert f"ISA family {floors['isa']}" in md and "Floors (" in md and "x floor" in md
    # the command that repeats the run, from the options (not sys.argv), and the data's path
    assert report["command"].startswith(f"dit-bench {tiny_export} ")
    for part in ("--limit 4", "--batch 1,2", "--rounds 3", "--threads 1", "--json"):
        assert part in report["command"], part
    written = (tmp_path / "r" / "report.md").read_text()  # the file a person opens
    assert f"Command: `{report['command']}`" in written
    assert f"Data: {report['data']['path']} (val), 4 pairs" in written
    assert "rest -" not in written  # a split timed apart is never printed as a negative rest
    assert "interleaved rounds" in md and "Machine at start: load" in md and "rest" in md


@pytest.mark.skipif(gpu_unavailable_reason() is None, reason="this machine has a GPU")
def test_engine_without_gpu_explains_and_fails(tiny_export, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            str(tiny_export),
            *TINY,
            "--engine",
            "fp16",
            "--limit",
            "2",
            "--report-dir",
            str(tmp_path / "r"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1  # refused before any work, in one line
    assert "needs an NVIDIA GPU" in err and "drop --engine" in err
    assert not (tmp_path / "r").exists()  # no report replaced by an empty one


def test_not_a_dataset_is_one_clear_line(tiny_export, tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    code = main([str(tiny_export), *TINY, "--data", str(tmp_path / "junk")])
    err = capsys.readouterr().err
    assert code == 1 and "is not a dataset" in err and "Traceback" not in err


def test_missing_export_dir(tmp_path, capsys):
    assert main([str(tmp_path / "none")]) == 1
    assert "export directory not found" in capsys.readouterr().err


def test_runtime_cells_are_sized_for_the_batches_benchmarked(tiny_export):
    """ONNX Runtime's TensorRT provider builds its profile from max_batch: the largest batch
    timed, not a fixed 64 (a profile tuned for batch 32 while batches 1 and 8 are timed)."""
    from dit_deploy.bench.worker import _open_runner

    cell = {"backend": "onnxruntime", "device": "cpu", "layout": "fused", "precision": "fp32"}
    req = {"cell": cell, "export_dir": str(tiny_export), "batches": [1, 8], "threads": 1}
    assert _open_runner(req).predictor.max_batch == 8


def test_an_unusable_report_dir_is_refused_before_the_work_and_leaves_nothing(
    tiny_export, tmp_path, capsys
):
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "file" / "r", Path("/proc") / "dit-bench-report"):
        assert main([str(tiny_export), *TINY, "--report-dir", str(bad)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not a writable directory" in err, err
        assert "Floors" not in capsys.readouterr().out  # nothing measured
    fresh = tmp_path / "a" / "b"
    from dit_deploy.bench.cli import _check_writable_dir

    _check_writable_dir(fresh)  # writable: checked by making it, then left as it was
    assert not (tmp_path / "a").exists()
