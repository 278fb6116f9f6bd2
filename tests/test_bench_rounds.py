"""dit-bench's trustworthy-latency machinery on fake timings: interleaved rounds, per-round
ratios and their spread, the noise flag, and the machine-load record. Nothing is timed."""

from __future__ import annotations

import pytest

from dit_deploy.bench.machine import busy_processes, describe
from dit_deploy.bench.matrix import latency_summary
from dit_deploy.bench.report import row
from dit_deploy.bench.rounds import interleave, runs_per_slice
from dit_deploy.bench.stats import noise_reasons, round_medians, round_ratios, spread


class FakeCell:
    """Returns scripted run times; records every slice in a shared log."""

    def __init__(self, label, log, seconds=0.01, fail_at=None):
        self.label, self.log, self.seconds, self.fail_at = label, log, seconds, fail_at

    def time(self, batch, runs):
        self.log.append((self.label, batch, runs))
        if (
            self.fail_at is not None
            and len([e for e in self.log if e[0] == self.label]) > self.fail_at
        ):
            raise RuntimeError("worker died")
        return [self.seconds] * runs


def test_interleave_runs_a_b_c_each_round_for_each_batch():
    log, sleeps = [], []
    cells = [FakeCell(name, log) for name in "ABC"]
    times = interleave(
        cells, [1, 4], rounds=3, runs=lambda c, b: b + 1, sleep=sleeps.append, settle_s=0.5
    )
    one_round = [(n, b, b + 1) for b in (1, 4) for n in "ABC"]
    assert log == one_round * 3
    assert sleeps == [0.5] * len(log)  # a settle pause before every slice
    assert times["B"][4] == [[0.01] * 5] * 3  # per cell, per batch: one list per round


def test_interleave_drops_a_failing_cell_and_goes_on():
    log, failures = [], []
    cells = [FakeCell("A", log), FakeCell("B", log, fail_at=2), FakeCell("C", log)]
    times = interleave(
        cells,
        [1],
        rounds=4,
        runs=lambda c, b: 1,
        on_failure=lambda c, e: failures.append((c.label, str(e))),
        sleep=lambda s: None,
    )
    assert failures == [("B", "worker died")]
    assert [e[0] for e in log] == list("ABC") * 2 + ["A", "B", "C"] + ["A", "C"]
    assert len(times["A"][1]) == 4 and len(times["B"][1]) == 2 and len(times["C"][1]) == 4
    with pytest.raises(RuntimeError):  # without a handler the failure propagates
        interleave([FakeCell("X", [], fail_at=0)], [1], 1, lambda c, b: 1, sleep=lambda s: None)


def test_runs_per_slice_spends_the_budget_over_the_rounds():
    assert runs_per_slice(0.010, budget_s=5.0, rounds=10) == 50  # 0.5 s per slice, capped 50
    assert runs_per_slice(0.020, budget_s=5.0, rounds=10) == 25
    assert runs_per_slice(2.0, budget_s=5.0, rounds=10) == 1  # slow model: at least one call
    assert runs_per_slice(0.0, budget_s=5.0, rounds=10, cap=7) == 7


def test_spread_and_round_ratios_on_known_values():
    s = spread([10.0, 11.0, 12.0, 13.0, 14.0])
    assert (s.rounds, s.median, s.p25, s.p75) == (5, 12.0, 11.0, 13.0)
    assert s.spread == pytest.approx(2.0 / 12.0)
    assert spread([3.0]).spread == 0.0
    with pytest.raises(ValueError):
        spread([])
    assert round_medians([[1.0, 3.0, 2.0], [5.0], []]) == [2.0, 5.0]
    assert round_ratios([10.0, 20.0], [5.0, 4.0]) == [2.0, 5.0]
    with pytest.raises(ValueError, match="rounds differ"):
        round_ratios([1.0], [1.0, 2.0])


def test_drift_cancels_in_per_round_ratios():
    """The machine slows down 3x in the middle rounds: both cells' latencies spread widely,
    the per-round speed-up does not move, so only the baseline is flagged."""
    drift = [1.0, 1.0, 3.0, 3.0, 1.0]
    base = {1: [[0.100 * d, 0.102 * d, 0.098 * d] for d in drift]}
    fast = {1: [[0.025 * d, 0.0255 * d, 0.0245 * d] for d in drift]}
    cell = latency_summary(fast, base, [1], limit=0.10)["1"]
    assert cell["speedup"]["median"] == pytest.approx(4.0)
    assert cell["speedup"]["spread"] == pytest.approx(0.0, abs=1e-9)
    assert cell["round_spread"] > 1.0 and cell["noisy"] == []
    assert cell["rounds"] == 5 and cell["n"] == 15
    assert cell["round_medians_ms"][2] == pytest.approx(75.0)
    assert cell["pairs_per_s"] == pytest.approx(1 / (cell["p50"] / 1e3))
    baseline = latency_summary(base, None, [1], limit=0.10)["1"]
    assert "speedup" not in baseline
    assert baseline["noisy"] and "latency spread" in baseline["noisy"][0]


def test_a_cell_hit_by_noise_its_baseline_did_not_see_is_flagged():
    base = {1: [[0.100]] * 6}
    noisy = {1: [[0.025], [0.025], [0.050], [0.025], [0.040], [0.026]]}
    cell = latency_summary(noisy, base, [1], limit=0.10)["1"]
    assert cell["noisy"] and "speed-up spread" in cell["noisy"][0]
    assert latency_summary(noisy, base, [1], limit=10.0)["1"]["noisy"] == []  # limit is honoured


def test_noise_reasons_judges_the_ratio_when_there_is_one():
    wide, narrow = spread([1.0, 2.0, 3.0, 4.0]), spread([1.0, 1.01, 1.02, 1.0])
    assert noise_reasons(wide, narrow, 0.1) == []
    assert "speed-up" in noise_reasons(narrow, wide, 0.1)[0]
    assert "latency" in noise_reasons(wide, None, 0.1)[0]
    assert noise_reasons(narrow, None, 0.1) == []


def test_report_row_shows_speedup_spread_and_noisy_status():
    lat = latency_summary(
        {1: [[0.025], [0.025], [0.050], [0.025]]}, {1: [[0.1]] * 4}, [1], limit=0.1
    )
    cell = {"label": "x", "result": {"status": "ok", "latency": lat}}
    values = row(cell, "1", short_status=True)
    assert values[-1] == "ok, NOISY"
    from dit_deploy.bench.report import COLUMNS

    assert values[COLUMNS.index("speed-up")] == "4.00x"
    assert values[COLUMNS.index("spread")].startswith("±")
    assert values[COLUMNS.index("x floor")] == "-"  # no floor measured for this cell
    assert row(cell, "1")[-1].startswith("ok, NOISY: speed-up spread")
    quiet = latency_summary({1: [[0.05]] * 3}, {1: [[0.1]] * 3}, [1], limit=0.1)
    assert row({"label": "y", "result": {"status": "ok", "latency": quiet}}, "1")[-1] == "ok"


def test_busy_processes_and_load_description():
    before = {1: ("python", 100), 2: ("sshd", 50), 3: ("me", 0), 4: ("gone", 10)}
    after = {1: ("python", 190), 2: ("sshd", 51), 3: ("me", 100), 5: ("new", 80)}
    busy = busy_processes(before, after, seconds=1.0, hz=100.0, exclude={3})
    assert busy == [{"pid": 1, "name": "python", "cpu_pct": 90.0}]
    load = {"loadavg": [2.5, 1.0, 0.5], "cores": 2, "busy_processes": busy, "quiet": False}
    text = describe(load)
    assert "load 2.50/1.00/0.50" in text and "python (pid 1, 90%)" in text
    assert "NOT a quiet machine" in text
    calm = {"loadavg": [0.1, 0.1, 0.1], "cores": 2, "busy_processes": [], "quiet": True}
    assert "NOT" not in describe(calm)


def test_table_prints_reasons_with_brackets_verbatim():
    """Reasons name extras like dit-deploy[gpu]; the terminal table must not eat them as markup."""
    import io

    from rich.console import Console

    from dit_deploy.bench.report import print_table

    reason = "the tensorrt package is not installed (pip install 'dit-deploy[gpu]')"
    report = {
        "model": "m",
        "data": {"name": "d/val", "pairs": 1},
        "batches": [1],
        "rounds": 1,
        "noise_limit": 0.1,
        "environment": {
            "cpu": "cpu",
            "cores": 2,
            "threads": 2,
            "gpus": 0,
            "versions": {},
            "load_at_start": {
                "loadavg": [0.0, 0.0, 0.0],
                "cores": 2,
                "busy_processes": [],
                "quiet": True,
            },
        },
        "cells": [
            {
                "label": "tensorrt fp16 (engine) [x]",
                "backend": "tensorrt",
                "precision": "fp16",
                "result": {"status": "unavailable", "reason": reason},
            }
        ],
    }
    out = io.StringIO()
    print_table(report, Console(file=out, width=300))
    text = out.getvalue()
    assert reason in text and "tensorrt fp16 (engine) [x]" in text


def test_the_table_fits_the_terminal_and_names_what_it_left_out(monkeypatch, capsys):
    """COLUMNS=100 (no terminal): every printed line fits in 100 characters, the label,
    status, latency and speed-up stay, and the columns left out are named (report.md has
    them); a wide terminal gets every column."""
    from dit_deploy.bench.report import COLUMNS, print_table

    lat = {"p50": 123.4, "p90": 130.2, "p99": 140.9, "pairs_per_s": 8.11,
           "speedup": {"median": 4.68, "spread": 0.04}}  # fmt: skip
    cell = {
        "label": "onnxruntime int8 (fused)", "backend": "onnxruntime", "precision": "int8",
        "size_mb": 110.2, "parity": {"max_abs": 0.0123, "mask_agreement": 0.9712},
        "result": {"status": "ok", "peak_rss_mb": 812.0, "latency": {"1": lat},
                   "accuracy": {"mIoU": 0.6152, "oIoU": 0.6248, "prec@0.5": 0.7116}},
    }  # fmt: skip
    report = {
        "model": "dit-tiny-synthetic", "data": {"name": "synthetic/val", "pairs": 100},
        "batches": [1], "rounds": 10, "noise_limit": 0.1, "baseline": "pytorch fp32",
        "environment": {"cpu": "AMD EPYC", "cores": 2, "threads": 2, "gpus": 0, "versions": {}},
        "cells": [cell, {**cell, "label": "openvino int8 (split)"}],
    }  # fmt: skip
    monkeypatch.setenv("COLUMNS", "100")
    print_table(report)
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100, out
    for kept in ("backend / precision", "status", "p50 ms", "speed-up", "4.68x", "123.4"):
        assert kept in out, kept
    flat = " ".join(out.split())  # the note wraps at the width too
    assert "to fit 100 columns, left out: " in flat and "report.md has every column" in flat
    monkeypatch.setenv("COLUMNS", "300")
    print_table(report)
    wide = capsys.readouterr().out
    assert all(c in wide for c in COLUMNS) and "left out" not in wide
