"""``dit-deploy batch`` on a real local Ray (127.0.0.1, started once for this module).

The export is the bundled synthetic model (it segments by the text, so masks and metrics are
not trivial); the rows are a small generated synthetic split.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dit_deploy.batch import BatchJobError, BatchOptions, run_batch
from dit_deploy.batch.cluster import connect
from dit_deploy.batch.pipeline import build_dataset
from dit_deploy.cli import main as cli_main
from dit_deploy.data import open_dataset
from dit_deploy.data.synthetic import generate
from dit_deploy.errors import BackendUnavailableError, DatasetError
from dit_deploy.mask_codec import decode_png, decode_rle
from dit_deploy.metrics import RISMetrics
from dit_deploy.runtime import Predictor

ROOT = Path(__file__).resolve().parents[1]
TOKEN_FILE = Path.home() / ".ray" / "auth_token"
TOKEN_FILE_BEFORE: list[bool] = []


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    from dit_deploy.exporters.onnx_export import run_export
    from dit_deploy.model.dit_model import DITModel

    out = tmp_path_factory.mktemp("batch") / "export"
    run_export(
        DITModel.from_pretrained("dit-tiny-synthetic"), out, layout="fused", log=lambda *_: None
    )
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("batch") / "data"
    generate(out, n_train=0, n_val=14, seed=7, size=128)
    return out


@pytest.fixture(scope="module")
def pairs(data_dir) -> list[dict]:
    """The synthetic val split as rows, image paths relative to ``data_dir``."""
    return [
        {"id": f"row{i}", "image": str(s.image_path.relative_to(data_dir)), "text": s.sentence}
        for i, s in enumerate(open_dataset(data_dir, "val"))
    ]


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    """One embedded Ray for the module; its files in a private temp dir, not /tmp/ray."""
    tmp = tempfile.mkdtemp(prefix="dbr", dir="/tmp")  # short: Ray's socket paths are limited
    saved = os.environ.get("RAY_TMPDIR")
    TOKEN_FILE_BEFORE.append(TOKEN_FILE.exists())
    os.environ["RAY_TMPDIR"] = tmp
    try:
        with connect(None, num_cpus=3) as info:
            yield info
    finally:
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(tmp, ignore_errors=True)


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _parts(out: Path) -> list[dict]:
    rows = []
    for part in sorted(out.glob("rows/part-*.jsonl")):
        rows += [json.loads(line) for line in part.read_text().splitlines()]
    return rows


def _errors(out: Path) -> dict[str, str]:
    lines = (out / "errors.jsonl").read_text().splitlines()
    return {e["id"]: e["error"] for e in map(json.loads, lines)}


def test_embedded_ray_is_loopback_and_writes_no_token_file(ray_local):
    assert ray_local.mode == "embedded"
    assert ray_local.address == "127.0.0.1"
    assert ray_local.cpus == 3
    assert TOKEN_FILE.exists() == TOKEN_FILE_BEFORE[0]  # token auth on, token not on disk


def test_two_workers_match_the_serial_predictor_row_for_row(
    export_dir, data_dir, pairs, tmp_path, capsys
):
    source = _write_jsonl(data_dir / "pairs.jsonl", pairs)
    out = tmp_path / "out"
    argv = ["batch", str(source), str(out), "--export", str(export_dir)]
    argv += ["--num-workers", "2", "--batch-size", "4", "--shard-size", "8", "--png", "--json"]
    assert cli_main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert "batch: start:" in captured.err and "batch: finished:" in captured.err
    assert summary["workers"] == 2 and summary["ok"] == len(pairs) and summary["errors"] == 0
    assert summary["shards"] == -(-len(pairs) // 8) and summary["rows_per_s"] > 0
    assert json.loads((out / "summary.json").read_text())["ok"] == len(pairs)

    rows = _parts(out)
    assert [r["id"] for r in rows] == [p["id"] for p in pairs]  # every id once, input order
    predictor = Predictor(export_dir, threads=1, max_batch=4)
    expected = predictor.predict_batch([(str(data_dir / p["image"]), p["text"]) for p in pairs])
    for row, pair, want in zip(rows, pairs, expected, strict=True):
        assert row["text"] == pair["text"]
        mask = decode_rle(row["mask"])
        assert np.array_equal(mask, want.mask), row["id"]
        assert row["score"] == pytest.approx(want.score, abs=1e-6)
        assert np.array_equal(decode_png((out / row["png"]).read_bytes()), want.mask)
    assert any(r.mask.any() for r in expected)  # the comparison is not between empty masks
    # the documented dataset path holds exactly the rows, for Ray Data's own reader
    import ray

    read = ray.data.read_json(str(out / "rows")).take_all()
    assert sorted(r["id"] for r in read) == sorted(p["id"] for p in pairs)
    assert set(read[0]) == {"id", "image", "text", "score", "mask", "png"}


def test_metrics_on_a_synthetic_split_match_the_predictor(export_dir, data_dir, tmp_path):
    summary = run_batch(
        BatchOptions("synthetic:val", tmp_path / "out", export_dir, data=data_dir, batch_size=4),
        log=lambda _: None,
    )
    samples = list(open_dataset(data_dir, "val"))
    predictor = Predictor(export_dir, threads=1)
    results = predictor.predict_batch([(str(s.image_path), s.sentence) for s in samples])
    expected = RISMetrics()
    for sample, result in zip(samples, results, strict=True):
        expected.update(result.mask, sample.mask())
    want = expected.compute()
    assert summary["metrics"]["count"] == len(samples) == summary["ok"]
    for key, value in want.items():
        assert summary["metrics"][key] == pytest.approx(value, abs=1e-12), key
    assert 0.3 < want["mIoU"] < 1.0  # the bundled model segments these scenes
    rows = _parts(tmp_path / "out")
    assert all({"iou", "intersection", "union"} <= set(r) for r in rows)


def test_bad_rows_go_to_errors_jsonl_and_good_rows_complete(export_dir, data_dir, pairs, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    good = pairs[:5]
    rows = [
        *good[:2],
        {"id": "missing", "image": "no/such/file.png", "text": "the red circle"},
        {"id": "corrupt", "image": str(corrupt), "text": "the red circle"},
        {"id": "empty", "image": good[0]["image"], "text": "   "},
        {"id": "notext", "image": good[0]["image"]},
        {**good[2], "text": "a duplicate of row 2's id"},
        "{this is not json",
        *good[2:],
    ]
    source = _write_jsonl(data_dir / "bad.jsonl", rows)
    out = tmp_path / "out"
    summary = run_batch(
        BatchOptions(str(source), out, export_dir, batch_size=3, shard_size=4),
        log=lambda _: None,
    )
    assert summary["ok"] == len(good) and summary["errors"] == 6
    assert [r["id"] for r in _parts(out)] == [p["id"] for p in good]
    errors = _errors(out)
    assert set(errors) == {"missing", "corrupt", "empty", "notext", good[2]["id"], "bad.jsonl:8"}
    assert "image file not found" in errors["missing"] and "no/such/file.png" in errors["missing"]
    assert "cannot decode" in errors["corrupt"] and "corrupt.png" in errors["corrupt"]
    assert "is empty" in errors["empty"]
    assert "no text field" in errors["notext"]
    assert "duplicate id" in errors[good[2]["id"]]
    assert "invalid JSON" in errors["bad.jsonl:8"]


def test_a_rerun_redoes_lost_and_corrupt_shards_only(export_dir, data_dir, pairs, tmp_path):
    source = _write_jsonl(data_dir / "resume.jsonl", pairs)
    out = tmp_path / "out"
    options = BatchOptions(str(source), out, export_dir, batch_size=4, shard_size=5)
    first = run_batch(options, log=lambda _: None)
    parts = sorted(out.glob("rows/part-*.jsonl"))
    assert len(parts) == first["shards"] >= 5
    kept = {p.name: p.stat().st_mtime_ns for p in parts[::2]}
    for p in parts[1::2]:
        p.unlink()  # lost shards, as if the job died before writing them
    parts[2].write_text(parts[2].read_text()[:40])  # a shard from another (broken) writer
    del kept[parts[2].name]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a killed writer: its PID is no longer running
    (out / f".part-00009.jsonl.tmp-{dead.pid}-abc").write_text("half")
    lines: list[str] = []
    second = run_batch(options, log=lines.append)
    assert second["shards_resumed"] == len(kept)
    assert any("resuming" in line for line in lines)
    assert any("redoing it" in line for line in lines)
    assert sorted(r["id"] for r in _parts(out)) == sorted(p["id"] for p in pairs)
    assert {
        p.name: p.stat().st_mtime_ns for p in out.glob("rows/part-*.jsonl") if p.name in kept
    } == (kept)
    assert not list(out.glob(".*.tmp-*"))
    third = run_batch(options, log=lambda _: None)  # all done: nothing runs, Ray not needed
    assert third["shards_resumed"] == third["shards"] and third["ray"] is None
    assert third["ok"] == len(pairs) and third["rows_this_run"] == 0
    # a different job does not resume into the same directory
    with pytest.raises(BatchJobError, match="differs in: shard_size"):
        run_batch(BatchOptions(str(source), out, export_dir, shard_size=7), log=lambda _: None)


def _descendants_named(root_pid: int, prefix: str) -> list[int]:
    """PIDs of processes below ``root_pid`` whose title starts with ``prefix`` (Linux)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            if not title.startswith(prefix):
                continue
            pid = int(entry.name)
            while pid > 1:
                stat = Path(f"/proc/{pid}/stat").read_text()
                pid = int(stat.rsplit(")", 1)[1].split()[1])
                if pid == root_pid:
                    found.append(int(entry.name))
                    break
        except (OSError, ValueError, IndexError):
            continue
    return found


def _repeat(pairs: list[dict], times: int) -> list[dict]:
    return [{**p, "id": f"{p['id']}_{k}"} for k in range(times) for p in pairs]


def test_a_killed_worker_is_retried_by_ray(export_dir, data_dir, pairs, tmp_path):
    rows = _repeat(pairs, 4)
    source = _write_jsonl(data_dir / "kill_worker.jsonl", rows)
    out = tmp_path / "out"
    options = BatchOptions(str(source), out, export_dir, batch_size=2, shard_size=4)
    result: dict = {}
    job = threading.Thread(
        target=lambda: result.update(summary=run_batch(options, log=lambda _: None))
    )
    job.start()
    killed = None
    deadline = time.monotonic() + 120
    while job.is_alive() and time.monotonic() < deadline:
        parts = list(out.glob("rows/part-*.jsonl"))
        actors = _descendants_named(os.getpid(), "ray::MapWorker(MapBatches(PredictorWorker")
        if parts and actors:
            killed = actors[0]
            parts_at_kill = len(parts)
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.02)
    job.join(timeout=180)
    assert not job.is_alive()
    assert killed is not None, "the job ended before a worker could be killed"
    assert parts_at_kill < -(-len(rows) // 4)
    assert result["summary"]["ok"] == len(rows)
    assert sorted(r["id"] for r in _parts(out)) == sorted(r["id"] for r in rows)


def _processes_with_env(key: str, value: str) -> list[int]:
    pids = []
    needle = f"{key}={value}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
    return pids


def test_a_killed_job_resumes_with_exactly_the_input_ids(export_dir, data_dir, pairs, tmp_path):
    rows = _repeat(pairs, 4)
    source = _write_jsonl(data_dir / "kill_job.jsonl", rows)
    out = tmp_path / "out"
    argv = [str(source), str(out), "--export", str(export_dir), "--batch-size", "2"]
    argv += ["--shard-size", "4"]
    ray_tmp = tempfile.mkdtemp(prefix="dbk", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "job.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dit_deploy.cli", "batch", *argv],
            env=env,
            start_new_session=True,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 150
        while not glob.glob(str(out / "rows" / "part-*.jsonl")) and time.monotonic() < deadline:
            assert proc.poll() is None, f"the job ended before it was killed:\n{log.read_text()}"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait()
    finally:
        for pid in _processes_with_env("RAY_TMPDIR", ray_tmp):  # workers outlive the raylet
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    done_before = len(list(out.glob("rows/part-*.jsonl")))
    assert 1 <= done_before < -(-len(rows) // 4)
    summary = run_batch(
        BatchOptions(str(source), out, export_dir, batch_size=2, shard_size=4),
        log=lambda _: None,
    )
    assert summary["shards_resumed"] == done_before
    ids = [r["id"] for r in _parts(out)]
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(r["id"] for r in rows)


def test_an_export_changed_after_export_is_refused_in_one_line(
    export_dir, data_dir, pairs, tmp_path, capsys
):
    changed = tmp_path / "export"
    shutil.copytree(export_dir, changed)
    with open(changed / "dit_fused.onnx", "ab") as f:
        f.write(b"\0")
    source = _write_jsonl(data_dir / "changed.jsonl", pairs[:2])
    assert cli_main(["batch", str(source), str(tmp_path / "out"), "--export", str(changed)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "changed since it was written" in err[0]


def test_a_worker_that_cannot_be_placed_is_an_error_not_a_hang(
    export_dir, data_dir, pairs, tmp_path
):
    from dit_deploy.runtime.devices import cuda_device_count

    have = cuda_device_count()  # a GPU machine's Ray sees its GPUs: ask for one more
    source = _write_jsonl(data_dir / "gpu.jsonl", pairs[:2])
    options = BatchOptions(str(source), tmp_path / "out", export_dir, gpus_per_worker=have + 1)
    with pytest.raises(BackendUnavailableError, match=rf"= {have + 1:g} GPU\(s\), Ray has {have}"):
        run_batch(options, log=lambda _: None)


def test_cpu_stages_run_as_tasks_apart_from_the_model_actors(export_dir, capsys):
    options = BatchOptions("unused.jsonl", Path("unused"), export_dir)
    ds = build_dataset(options, "fused", [{"id": "a", "position": 0, "shard": 0}])
    ds.explain()
    physical = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    assert "TaskPoolMapOperator[MapBatches(prepare)]" in physical
    assert "ActorPoolMapOperator[MapBatches(PredictorWorker)]" in physical
    assert "TaskPoolMapOperator[MapBatches(finish)]" in physical


def test_a_worker_failing_in_init_comes_back_typed_from_real_ray(
    export_dir, data_dir, pairs, tmp_path
):
    """Ray keeps an actor's ``__init__`` error only as text; the job still raises our typed
    error with its message (the export's int8 entry carries no verified-on record, which the
    driver does not judge: workers may run on other CPUs than the driver's)."""
    from dit_deploy.errors import ArtifactError

    planted = tmp_path / "export"
    shutil.copytree(export_dir, planted)
    manifest = json.loads((planted / "manifest.json").read_text())
    manifest["precisions"] = {"int8": manifest["graphs"]}  # FP32 files, no "verified" record
    (planted / "manifest.json").write_text(json.dumps(manifest))
    source = _write_jsonl(data_dir / "init.jsonl", pairs[:2])
    options = BatchOptions(str(source), tmp_path / "out", planted, precision="int8")
    start = time.perf_counter()
    with pytest.raises(ArtifactError, match=r"^batch worker: the int8 graphs carry no record"):
        run_batch(options, log=lambda _: None)
    assert time.perf_counter() - start < 120  # an error, not a retry loop


# ------------------------------------------------------------ a real 2-node loopback cluster
@pytest.fixture(scope="module")
def loopback_cluster():
    """Head (2 CPUs) + a second node (2 CPUs) on 127.0.0.1, in their own processes; the jobs
    join it with --ray-address, from a fresh process, as a user would."""
    import secrets

    tmp = tempfile.mkdtemp(prefix="dbc", dir="/tmp")  # short: Ray's socket paths are limited
    env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "ray_cluster.py"), "2", "2"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=env, start_new_session=True,
    )  # fmt: skip
    try:
        address = _readline_within(proc, 180)
        assert address.startswith("127.0.0.1:"), address
        yield address, env
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def _readline_within(proc: subprocess.Popen, seconds: float) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout=seconds):
        raise AssertionError(f"the cluster did not start within {seconds:.0f} s")
    return proc.stdout.readline().strip()


def _batch_cli(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dit_deploy.cli", "batch", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def test_a_job_runs_on_a_two_node_loopback_cluster_by_its_address(
    loopback_cluster, export_dir, data_dir, pairs, tmp_path
):
    address, env = loopback_cluster
    source = _write_jsonl(data_dir / "cluster.jsonl", pairs)
    out = tmp_path / "out"
    r = _batch_cli(env, str(source), str(out), "--export", str(export_dir),
                   "--ray-address", address, "--num-workers", "2", "--threads", "1",
                   "--batch-size", "4", "--shard-size", "8", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Ray cluster at {address} (4 CPUs" in r.stderr
    rows = _parts(out)
    assert [row["id"] for row in rows] == [p["id"] for p in pairs]
    predictor = Predictor(export_dir, threads=1, max_batch=4)
    expected = predictor.predict_batch([(str(data_dir / p["image"]), p["text"]) for p in pairs])
    for row, want in zip(rows, expected, strict=True):
        assert np.array_equal(decode_rle(row["mask"]), want.mask), row["id"]


def test_a_job_the_cluster_cannot_place_is_refused_in_one_line(
    loopback_cluster, export_dir, data_dir, pairs, tmp_path
):
    address, env = loopback_cluster
    source = _write_jsonl(data_dir / "big.jsonl", pairs[:2])
    start = time.monotonic()
    r = _batch_cli(env, str(source), str(tmp_path / "out"), "--export", str(export_dir),
                   "--ray-address", address, "--num-workers", "2", "--threads", "2")  # fmt: skip
    assert r.returncode == 1 and time.monotonic() - start < 60
    [line] = r.stderr.strip().splitlines()[-1:]
    assert "does not fit this Ray (2 worker(s) x 2 thread(s) + 1 CPU" in line
    assert "= 5 CPUs, Ray has 4" in line and "lower --num-workers" in line


def test_an_address_where_nothing_listens_fails_in_one_line_within_seconds(
    export_dir, data_dir, pairs, tmp_path
):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = _write_jsonl(data_dir / "nowhere.jsonl", pairs[:2])
    start = time.monotonic()
    r = _batch_cli(dict(os.environ), str(source), str(tmp_path / "out"), "--export",
                   str(export_dir), "--ray-address", f"127.0.0.1:{port}", timeout=60)  # fmt: skip
    assert r.returncode == 1 and time.monotonic() - start < 30
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and f"no Ray cluster answers at 127.0.0.1:{port}" in err[0]


def test_a_missing_source_is_named_before_the_throughput_plan_is_measured(
    export_dir, tmp_path, monkeypatch
):
    import dit_deploy.runtime.throughput as throughput

    def measured(*_args, **_kwargs):
        raise AssertionError("the plan was measured before the source was read")

    monkeypatch.setattr(throughput, "plan_for", measured)
    options = BatchOptions(str(tmp_path / "missing.jsonl"), tmp_path / "out", export_dir)
    with pytest.raises(DatasetError, match="neither a file nor a dataset split"):
        run_batch(options, log=lambda _: None)
    assert not (tmp_path / "out").exists()
