"""Throughput mode on a CPU: candidates, real measurement in processes, the recorded plan and
its checks, and its use by ``dit-deploy batch`` (auto) and ``dit-deploy serve``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dit_deploy.errors import InputError
from dit_deploy.runtime import throughput as tp
from dit_deploy.runtime.throughput import Candidate, candidates


def test_candidates_split_the_cores_evenly():
    assert candidates(2) == [Candidate(1, 2, 1), Candidate(1, 2, 8),
                             Candidate(2, 1, 1), Candidate(2, 1, 8)]  # fmt: skip
    assert sorted({(c.workers, c.threads) for c in candidates(6)}) == [
        (1, 6), (2, 3), (4, 1), (6, 1)]  # fmt: skip
    assert candidates(1, batches=(4,)) == [Candidate(1, 1, 4)]
    with pytest.raises(InputError):
        candidates(0)


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def plan_and_export(tiny_export, tmp_path_factory):
    """One real tuning of the tiny export on this machine (0.4 s per candidate)."""
    import os

    cache = tmp_path_factory.mktemp("tune-cache")
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    try:
        lines: list[str] = []
        plan = tp.tune(tiny_export, seconds=0.4, log=lines.append)
    finally:
        if saved is None:
            os.environ.pop("XDG_CACHE_HOME")
        else:
            os.environ["XDG_CACHE_HOME"] = saved
    return plan, tiny_export, cache, lines


def test_tune_measures_every_candidate_and_records_the_best(plan_and_export, monkeypatch):
    plan, export, cache, lines = plan_and_export
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    cores = plan["cores"]
    assert [(r["workers"], r["threads"], r["batch"]) for r in plan["measured"]] == [
        (c.workers, c.threads, c.batch) for c in candidates(cores)
    ]
    assert all(r["pairs_per_s"] > 0 for r in plan["measured"])
    assert plan["chosen"] == max(plan["measured"], key=lambda r: r["pairs_per_s"])
    assert len(lines) == len(plan["measured"]) and "pairs/s" in lines[0]
    assert plan["layout"] == "fused" and plan["backend"] == "onnxruntime"
    # recorded, and used as it is: nothing is measured again
    monkeypatch.setattr(tp, "measure", lambda *a, **k: pytest.fail("measured again"))
    assert tp.plan_for(export, log=lambda line: pytest.fail(line)) == plan
    assert tp.recorded_plan(export, layout="fused") == (plan, "")


def test_a_measured_rate_is_what_the_predictor_does(plan_and_export):
    """One worker of one thread at batch 1: within 2.5x of timing the same calls here (the
    machine's noise, not a systematic error: workers count whole calls over their window)."""
    import time

    from dit_deploy.runtime import Predictor

    plan, export, _, _ = plan_and_export
    rate = tp.measure(export, "onnxruntime", "fp32", None, Candidate(1, 1, 1), 0.5)
    p = Predictor(export, threads=1)
    rows = tp._sample_rows(p.manifest.input_size, 1)
    p.predict_batch(rows)
    start = time.perf_counter()
    for _ in range(10):
        p.predict_batch(rows)
    here = 10 / (time.perf_counter() - start)
    assert here / 2.5 < rate < here * 2.5, (rate, here)


@pytest.mark.parametrize("field", ["cpu", "backend_version", "cores", "manifest_sha256"])
def test_a_plan_for_another_machine_or_export_is_not_used(plan_and_export, cache, field):
    plan, export, _, _ = plan_and_export
    key = tp._key(export, "onnxruntime", "fp32", None)
    path = tp._cache_path(key)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(plan | {field: "elsewhere"}))
    got, why = tp.recorded_plan(export)
    assert got is None and field in why
    path.write_text("{not json")
    assert "unreadable" in tp.recorded_plan(export)[1]
    for shape in ("[1, 2]", json.dumps(plan | {"chosen": {"workers": 0}})):
        path.write_text(shape)
        assert "malformed" in tp.recorded_plan(export)[1]


def test_tune_verb_shows_the_recorded_plan(plan_and_export, monkeypatch, capsys):
    from dit_deploy.cli import main

    plan, export, cache, _ = plan_and_export
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    assert main(["tune", str(export), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == plan
    assert main(["tune", str(export)]) == 0
    out = capsys.readouterr().out
    assert "<- chosen" in out and f"{plan['chosen']['pairs_per_s']:.1f}" in out
    assert main(["tune", str(export.parent / "nowhere")]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def _write_plan(export: Path, chosen: dict, measured: list[dict] | None = None) -> dict:
    key = tp._key(export, "onnxruntime", "fp32", None)
    plan = {**key, "measured": measured or [chosen], "chosen": chosen, "seconds": 1.0,
            "created": "2026-12-07T00:00:00Z"}  # fmt: skip
    path = tp._cache_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan))
    return plan


def test_serve_takes_the_recorded_plan_on_a_cpu(tiny_export, cache):
    from dit_deploy.serving.server import ServeOptions

    opts = ServeOptions(export_dir=tiny_export)
    before = opts.policy()
    assert "dit-deploy tune" in before.why and before.threads == 1
    _write_plan(tiny_export, {"workers": 1, "threads": 2, "batch": 8, "pairs_per_s": 99.0})
    policy = opts.policy()
    assert (policy.instances, policy.threads, policy.max_queue_delay_us) == (1, 2, 0)
    assert "throughput plan measured on this machine (99.0 pairs/s" in policy.why
    given = ServeOptions(export_dir=tiny_export, instances=3).policy()
    assert given.instances == 3 and given.why == "from the command line"


def test_batch_auto_takes_the_plan_and_records_it(tiny_export, cache, tmp_path, monkeypatch):
    from dit_deploy.batch.pipeline import BatchOptions, resolve_throughput

    monkeypatch.setattr(tp, "measure", lambda *a, **k: pytest.fail("measured again"))
    chosen = {"workers": 2, "threads": 1, "batch": 4, "pairs_per_s": 50.0}
    _write_plan(tiny_export, chosen)
    auto = BatchOptions("p.jsonl", tmp_path, tiny_export, num_workers=None, threads=None,
                        batch_size=None)  # fmt: skip
    lines: list[str] = []
    filled, info = resolve_throughput(auto, "fused", lines.append)
    assert (filled.num_workers, filled.threads, filled.batch_size) == (2, 1, 4)
    assert info["source"] == "measured on this machine" and info["chosen"] == chosen
    assert "2 worker(s) x 1 thread(s), batch 4" in lines[0]
    one = BatchOptions("p.jsonl", tmp_path, tiny_export, num_workers=1, batch_size=None)
    mixed, info = resolve_throughput(one, "fused", print)
    assert (mixed.num_workers, mixed.threads, mixed.batch_size) == (1, 1, 4)
    assert info["auto"] == ["batch_size"]
    cluster = BatchOptions("p.jsonl", tmp_path, tiny_export, num_workers=None,
                           ray_address="127.0.0.1:1")  # fmt: skip
    filled, info = resolve_throughput(cluster, "fused", print)
    assert filled.num_workers == 1 and info["source"].startswith("defaults")
    given = BatchOptions("p.jsonl", tmp_path, tiny_export)
    assert resolve_throughput(given, "fused", print) == (given, {"source": "given"})


def test_candidates_that_do_not_fit_in_memory_are_skipped(tiny_export, cache, monkeypatch):
    """Several workers each hold the graphs: where they would not fit in the available memory
    they are not started (one worker always is); the winner is the best measured."""
    rates = {(1, 1): 10.0, (1, 8): 20.0}
    four = [Candidate(1, 2, 1), Candidate(1, 2, 8), Candidate(2, 1, 1), Candidate(2, 1, 8)]
    monkeypatch.setattr(tp, "candidates", lambda cores: four)
    monkeypatch.setattr(tp, "measure", lambda *args: rates[(args[4].workers, args[4].batch)])
    monkeypatch.setattr(
        tp, "_available_bytes", lambda: tp.worker_memory_bytes(tiny_export, None, "fp32")
    )
    lines: list[str] = []
    plan = tp.tune(tiny_export, seconds=0.1, log=lines.append)
    assert [(r["workers"], r["batch"]) for r in plan["measured"]] == [(1, 1), (1, 8)]
    assert plan["chosen"]["batch"] == 8
    assert sum("skipped, 2 workers need" in line for line in lines) == 2


def test_a_plan_that_cannot_be_recorded_still_serves_the_run(tiny_export, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))  # under a file: unwritable
    monkeypatch.setattr(tp, "candidates", lambda cores: [Candidate(1, 1, 1)])
    monkeypatch.setattr(tp, "measure", lambda *args: 7.0)
    lines: list[str] = []
    plan = tp.plan_for(tiny_export, log=lines.append)
    assert plan["chosen"]["pairs_per_s"] == 7.0
    assert "could not record the plan" in lines[-1] and "this run only" in lines[-1]
    assert tp.recorded_plan(tiny_export)[0] is None


def _row(workers: int, threads: int, batch: int, rate: float) -> dict:
    return {"workers": workers, "threads": threads, "batch": batch, "pairs_per_s": rate}


def test_a_server_takes_fewer_wider_instances_only_within_the_latency_trade():
    # ViT-B on 2 cores: one 2-thread instance is within 5% of two 1-thread ones and answers
    # a lone request in half the time; the bundled model: two instances are 1.55x, kept
    vit_b = [_row(1, 2, 1, 1.56), _row(1, 2, 8, 1.30), _row(2, 1, 1, 1.61), _row(2, 1, 8, 1.26)]
    assert tp.serving_choice({"chosen": vit_b[2], "measured": vit_b}) == vit_b[0]
    small = [_row(1, 2, 1, 388.0), _row(1, 2, 8, 300.0), _row(2, 1, 1, 560.0), _row(2, 1, 8, 603.0)]
    assert tp.serving_choice({"chosen": small[3], "measured": small}) == small[3]
    edge = [_row(1, 2, 1, 94.9), _row(2, 1, 1, 100.0)]  # just outside the 5% trade
    assert tp.serving_choice({"chosen": edge[1], "measured": edge}) == edge[1]
    edge[0]["pairs_per_s"] = 95.1
    assert tp.serving_choice({"chosen": edge[1], "measured": edge}) == edge[0]
    # rows a hand-edited plan breaks are not taken
    broken = [{"workers": 1, "threads": "2", "batch": 1, "pairs_per_s": 200.0}, edge[1]]
    assert tp.serving_choice({"chosen": edge[1], "measured": broken}) == edge[1]


def test_serve_runs_an_unbatched_plan_one_request_per_execution(tiny_export, cache, tmp_path):
    from dit_deploy.serving.server import ServeOptions, write_serving_repository
    from dit_deploy.serving.triton_repo import parse_config

    rows = [_row(1, 2, 1, 1.56), _row(2, 1, 1, 1.61)]
    _write_plan(tiny_export, rows[1], rows)
    opts = ServeOptions(export_dir=tiny_export)
    policy = opts.policy()
    assert (policy.instances, policy.threads, policy.preferred_batch) == (1, 2, 1)
    assert "one request per execution" in policy.why and "best 1.6" in policy.why
    repo = write_serving_repository(opts, tmp_path / "repo", policy)
    config = parse_config((repo / "dit_pipeline" / "config.pbtxt").read_text())
    assert list(config.dynamic_batching.preferred_batch_size) == [1]
    assert config.max_batch_size == 8  # clients may still send batches of up to 8
    assert config.instance_group[0].count == 1
    batched = [_row(1, 2, 8, 300.0), _row(2, 1, 8, 603.0)]
    _write_plan(tiny_export, batched[1], batched)
    policy = opts.policy()
    assert (policy.instances, policy.preferred_batch) == (2, None)
    repo = write_serving_repository(opts, tmp_path / "repo2", policy)
    config = parse_config((repo / "dit_pipeline" / "config.pbtxt").read_text())
    assert list(config.dynamic_batching.preferred_batch_size) == []
