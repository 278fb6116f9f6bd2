"""``dit-deploy batch`` without Ray: reading sources, the output directory, the command line,
and the runtime importing without the ``batch`` extra."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dit_deploy.batch.cli import register
from dit_deploy.batch.pipeline import BatchOptions
from dit_deploy.batch.shards import (
    BatchJobError,
    ShardPlan,
    ShardWriter,
    done_shards,
    mask_file,
    open_output,
    part_file,
)
from dit_deploy.batch.sources import read_source
from dit_deploy.errors import DatasetError, InputError

ROOT = Path(__file__).resolve().parents[1]


def test_jsonl_rows_resolve_paths_default_ids_and_flag_bad_lines(tmp_path):
    (tmp_path / "pairs.jsonl").write_text(
        "\n".join(
            [
                json.dumps({"id": 7, "image": "imgs/a.png", "text": "the cup"}),
                json.dumps({"image": "/abs/b.png", "text": "the left one"}),
                "",
                json.dumps({"id": 7, "image": "c.png", "text": "again"}),
                json.dumps({"id": "x", "text": "no image"}),
                json.dumps({"id": "y", "image": "d.png", "text": 3}),
                "[1, 2",
                json.dumps(["not", "an", "object"]),
            ]
        )
        + "\n"
    )
    rows = read_source(str(tmp_path / "pairs.jsonl"))
    assert not rows.has_ground_truth and len(rows) == 7
    assert [(r.position, r.id, r.image, r.text) for r in rows.rows] == [
        (0, "7", str(tmp_path / "imgs" / "a.png"), "the cup"),
        (1, "pairs.jsonl:2", "/abs/b.png", "the left one"),
    ]
    errors = {e.position: (e.id, e.error) for e in rows.errors}
    assert errors[2][0] == "7" and "duplicate id '7' (first at pairs.jsonl:1)" in errors[2][1]
    assert errors[3] == ("x", "pairs.jsonl:5: no image field")
    assert "text must be a string" in errors[4][1]
    assert errors[5][0] == "pairs.jsonl:7" and "invalid JSON" in errors[5][1]
    assert "expected an object" in errors[6][1]
    # the fingerprint follows the content
    before = rows.fingerprint()
    (tmp_path / "pairs.jsonl").write_text(
        (tmp_path / "pairs.jsonl").read_text().replace("the cup", "the mug")
    )
    assert read_source(str(tmp_path / "pairs.jsonl")).fingerprint() != before


def test_csv_rows_and_header_check(tmp_path):
    (tmp_path / "p.csv").write_text('id,image,text\na,x.png,"the red, round one"\n,y.png,cup\n')
    rows = read_source(str(tmp_path / "p.csv"))
    assert [(r.id, Path(r.image).name, r.text) for r in rows.rows] == [
        ("a", "x.png", "the red, round one"),
        ("p.csv:3", "y.png", "cup"),
    ]
    (tmp_path / "bad.csv").write_text("path,caption\nx.png,cup\n")
    with pytest.raises(DatasetError, match="must name the columns image and text"):
        read_source(str(tmp_path / "bad.csv"))


def test_source_errors_name_the_fix(tmp_path):
    with pytest.raises(DatasetError, match="neither a file nor a dataset split"):
        read_source(str(tmp_path / "missing.jsonl"))
    with pytest.raises(InputError, match="pass --data DIR"):
        read_source("refcoco:val")
    with pytest.raises(DatasetError, match="does not exist"):
        read_source("refcoco:val", tmp_path / "nowhere")
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(DatasetError, match="unknown input format"):
        read_source(str(tmp_path / "rows.txt"))


def test_output_directory_refuses_another_job_and_overwrite_clears_it(tmp_path):
    out = tmp_path / "out"
    job = {"format": 1, "input_sha256": "a", "shard_size": 2}
    open_output(out, job, overwrite=False, log=print)
    part_file(out, 0).write_text("")
    open_output(out, job, overwrite=False, log=print)  # the same job: resumes
    open_output(out, {**job, "source": "elsewhere"}, overwrite=False, log=print)  # same rows
    assert part_file(out, 0).exists()
    with pytest.raises(BatchJobError, match="differs in: input_sha256"):
        open_output(out, {**job, "input_sha256": "b"}, overwrite=False, log=print)
    export = {"precision": "fp32", "layout": "fused", "graphs_sha256": {"dit_fused": "1"}}
    other = tmp_path / "exported"
    open_output(other, {**job, "export": export}, overwrite=False, log=print)
    int8 = {**export, "precision": "int8", "graphs_sha256": {"dit_fused": "2"}}
    with pytest.raises(BatchJobError, match=r"differs in: export precision \('fp32' -> 'int8'\)"):
        open_output(other, {**job, "export": int8}, overwrite=False, log=print)
    requantized = {**export, "graphs_sha256": {"dit_fused": "3"}}
    with pytest.raises(BatchJobError, match=r"differs in: export graphs \(re-exported"):
        open_output(other, {**job, "export": requantized}, overwrite=False, log=print)
    lines: list[str] = []
    open_output(out, {**job, "input_sha256": "b"}, overwrite=True, log=lines.append)
    assert not part_file(out, 0).exists() and "removed the previous results" in lines[0]
    (tmp_path / "other").mkdir()
    part_file(tmp_path / "other", 3).parent.mkdir(parents=True)
    part_file(tmp_path / "other", 3).write_text("")
    with pytest.raises(BatchJobError, match="no job.json"):
        open_output(tmp_path / "other", job, overwrite=False, log=print)
    (tmp_path / "file").write_text("")
    with pytest.raises(BatchJobError, match="is a file"):
        open_output(tmp_path / "file", job, overwrite=False, log=print)


def test_writer_commits_a_shard_when_all_its_rows_are_in(tmp_path):
    plan = ShardPlan(total=5, shard_size=2)
    assert plan.count == 3 and list(plan.positions(2)) == [4]
    writer = ShardWriter(tmp_path, plan, png=False)

    def row(position, error=""):
        return {
            "id": f"r{position}",
            "position": position,
            "image": "i.png",
            "text": "t",
            "error": error,
            "score": 0.5,
            "mask": '{"size":[1,1],"counts":"01"}',
            "png": b"",
            "iou": float("nan"),
            "intersection": -1,
            "union": -1,
        }

    assert writer.add(row(1)) is None and not part_file(tmp_path, 0).exists()
    assert writer.add(row(1)) is None  # a row delivered twice counts once
    assert writer.add(row(0, error="image file not found: i.png")) == 0
    assert [json.loads(x)["id"] for x in part_file(tmp_path, 0).read_text().splitlines()] == ["r1"]
    assert "r0" in (tmp_path / "errors" / "errors-00000.jsonl").read_text()
    assert writer.add(row(4)) == 2
    ids = ["r0", "r1", "r2", "r3", "r4"]
    assert done_shards(tmp_path, plan, ids, print) == {0, 2}
    assert done_shards(tmp_path, plan, ["r0", "rX", "r2", "r3", "r4"], lambda _: None) == {2}
    assert mask_file("a/b c") == "masks/a%2Fb%20c.png" and mask_file("..") == "masks/_...png"


def test_options_are_checked_before_any_work(tmp_path):
    with pytest.raises(InputError, match="num_workers must be >= 1"):
        BatchOptions("x.jsonl", tmp_path, tmp_path, num_workers=0)
    with pytest.raises(InputError, match="unknown backend"):
        BatchOptions("x.jsonl", tmp_path, tmp_path, backend="tflite")
    with pytest.raises(InputError, match="--gpus-per-worker 1"):
        BatchOptions("x.jsonl", tmp_path, tmp_path, backend="tensorrt")
    assert BatchOptions("x", tmp_path, tmp_path, num_workers=4, threads=2).embedded_cpus() >= 9


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dit-deploy")
    register(parser.add_subparsers(dest="verb"))
    return parser


def test_cli_help_shows_defaults_and_examples(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["batch", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "refcoco:val" in text and "--ray-address auto" in text
    assert "(default: 1000)" in text and "(default: onnxruntime)" in text
    assert " ".join(text.split()).count("(default: auto:") == 3  # workers, threads, batch
    args = _parser().parse_args(["batch", "p.jsonl", "out", "--num-workers", "2", "--png"])
    assert (args.num_workers, args.png, args.ray_address, args.threads) == (2, True, None, None)
    assert _parser().parse_args(["batch", "p", "o", "--batch-size", "AUTO"]).batch_size is None
    with pytest.raises(SystemExit):
        _parser().parse_args(["batch", "p.jsonl", "out", "--batch-size", "0"])


def test_runtime_imports_without_ray_and_batch_names_the_extra(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        sys.modules["ray"] = None  # as if the batch extra were not installed
        import dit_deploy.runtime, dit_deploy.batch, dit_deploy.batch.cli
        from dit_deploy.cli import main
        assert "ray" not in [m for m in sys.modules if sys.modules[m] is not None]
        sys.exit(main(["batch", "pairs.jsonl", "out"]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("dit-deploy batch: error:")
    assert "pip install 'dit-deploy[batch]'" in done.stderr


def test_worker_errors_come_back_typed_and_others_name_ray():
    from dit_deploy.batch.pipeline import _pipeline_error
    from dit_deploy.errors import ArtifactError

    init_failure = RuntimeError(
        "The actor died because of an error raised in its creation task, ray::MapWorker\n"
        "Traceback (most recent call last):\n  ...\n"
        "dit_deploy.errors.ArtifactError: exports/x has no TensorRT engine; build it"
    )
    err = _pipeline_error(init_failure)
    assert isinstance(err, ArtifactError)
    assert str(err) == "batch worker: exports/x has no TensorRT engine; build it"
    try:
        try:
            raise InputError("bad thing")
        except InputError as inner:
            raise RuntimeError("wrapped by Ray") from inner
    except RuntimeError as outer:
        assert isinstance(_pipeline_error(outer), InputError)
    other = _pipeline_error(ValueError("object store full\nmore"))
    assert isinstance(other, BatchJobError)
    assert "ValueError: object store full" in str(other) and "re-run" in str(other)


def test_known_harmless_ray_lines_are_dropped_and_the_rest_kept(capfd):
    """Ray's known, harmless terminal lines (each named with its reason in cluster.py) are
    dropped, from Python logging and from the C++ core worker's stderr; any other line of
    Ray's, errors above all, still reaches the terminal."""
    import logging

    from dit_deploy.batch.cluster import (
        KNOWN_HARMLESS,
        KNOWN_HARMLESS_NATIVE,
        quiet_known_native_lines,
        quiet_known_ray_lines,
        terminal_handlers,
    )

    # a handler as Ray's own (Ray itself is not imported here: its first import in a process
    # decides whether an embedded Ray binds to the loopback, see cluster.py)
    ours = logging.StreamHandler()
    logging.getLogger("ray.data").addHandler(ours)
    try:
        quiet_known_ray_lines()
        quiet_known_ray_lines()  # idempotent: one filter per handler
        terminal = terminal_handlers()
    finally:
        logging.getLogger("ray.data").removeHandler(ours)
    assert ours in terminal and sum(f.__class__.__name__ == "_KnownHarmless"
                                    for f in ours.filters) == 1  # fmt: skip

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("ray.data", logging.WARNING, __file__, 1, message, (), None)

    for handler in terminal:
        for known in KNOWN_HARMLESS:
            assert not handler.filter(record(f"x {known} y")), known
        assert handler.filter(record("a real Ray Data warning"))
    with quiet_known_native_lines():
        for known in KNOWN_HARMLESS_NATIVE:
            os.write(2, f"[E core_worker.cc] Actor {known}. See ...\n".encode())
        os.write(2, b"[E core_worker.cc] a real core worker error\n")
    err = capfd.readouterr().err
    assert "a real core worker error" in err
    for known in KNOWN_HARMLESS_NATIVE:
        assert known not in err, known
