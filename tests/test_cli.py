"""The one command line: verbs, one-line errors, missing extras, progress in logs, and hints
that run as printed."""

from __future__ import annotations

import io
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import copy_export

from dit_deploy.cli import build_parser
from dit_deploy.cli import main as cli
from dit_deploy.errors import ArtifactError
from dit_deploy.progress import Progress
from dit_deploy.runtime import Predictor
from dit_deploy.runtime.devices import gpu_unavailable_reason

ROOT = Path(__file__).resolve().parents[1]


def _run_without(blocked: str, code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where importing ``blocked`` fails, as in an install
    without that extra."""
    prelude = f"import sys; sys.modules[{blocked!r}] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )


def test_every_verb_is_on_the_front():
    verbs = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert {"run", "export", "validate", "quantize", "bench", "segment", "perf-data"} <= verbs


@pytest.mark.parametrize(
    "argv",
    [["run", "--only", "export"], ["bench"], ["export", "--pretrained", "dit-tiny-synthetic"]],
)
def test_without_torch_console_scripts_say_which_extra_in_one_line(tmp_path, argv):
    out = tmp_path / "x"
    args = [*argv, "--out", str(out)] if argv[0] != "bench" else argv
    proc = _run_without(
        "torch", f"from dit_deploy.cli import main; sys.exit(main({args!r}))", tmp_path
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "pip install 'dit-deploy[torch]'" in proc.stderr


def test_runtime_predicts_without_torch(tiny_export, tmp_path):
    code = (
        "import numpy as np\n"
        "from dit_deploy.runtime import Predictor\n"
        f"r = Predictor({str(tiny_export)!r}).predict(np.zeros((20, 30, 3), np.uint8), 'cat')\n"
        "assert r.mask.shape == (20, 30)\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    proc = _run_without("torch", code, tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_progress_in_logs_is_plain_periodic_lines():
    stream = io.StringIO()
    with Progress("calibrate", 4, stream=stream, interval=0.0) as bar:
        for _ in range(4):
            bar.update(1)
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("calibrate: 1/4 (25%)") and lines[-2].startswith("calibrate: 4/4")
    assert re.fullmatch(r"calibrate: done 4/4 in \d+\.\d s", lines[-1])  # not the last again
    opened = io.StringIO()
    with Progress("bench", 0, stream=opened, interval=0.0) as bar:
        bar.describe("timing 11 cells in 10 interleaved rounds")
    assert opened.getvalue().count("timing 11 cells") == 1  # once, then "done"
    quiet = io.StringIO()
    with Progress("x", 100, stream=quiet, interval=3600) as bar:
        for _ in range(100):
            bar.update(1)
    assert quiet.getvalue().count("\n") == 1  # only the final line within the interval


def test_hint_for_a_missing_precision_runs_as_printed(tiny_export, tmp_path, capsys):
    d = copy_export(tiny_export, tmp_path / "with space")
    with pytest.raises(ArtifactError) as err:
        Predictor(d, precision="fp16")
    hint = re.search(r"dit-deploy quantize .*?--precision fp16", str(err.value)).group(0)
    argv = shlex.split(hint)[1:]
    assert cli([*argv, "--eval-size", "4", "--latency-runs", "0", "--quiet"]) == 0
    Predictor(d, precision="fp16").close()


@pytest.mark.skipif(gpu_unavailable_reason() is None, reason="this machine has a GPU")
def test_bench_engine_without_gpu_fails_fast_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    assert cli(["bench", "--engine", "fp16"]) == 1
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err
    assert "needs an NVIDIA GPU" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "--pretrained", "dit-tiny-synthetic", "--out", "{bad}"],
        ["bench", "{export}", "--report-dir", "{bad}"],
        ["triton-repo", "{export}", "{bad}"],
        ["run", "--only", "export", "--out", "{bad}"],
        ["perf-data", "{bad}/load.json", "--bundled"],
        ["segment", "{samples}/coffee.jpg", "the cup", "--export", "{export}",
         "--out-dir", "{bad}"],
    ],
)  # fmt: skip
def test_an_unusable_output_path_is_one_line(tiny_export, tmp_path, capsys, argv):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    bad = str(blocker / "out")  # under a regular file: no user, root included, can create it
    samples = Path(__file__).resolve().parents[1] / "dit_deploy" / "assets" / "samples"
    argv = [a.format(bad=bad, export=tiny_export, samples=samples) for a in argv]
    assert cli(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "a-file" in err
    assert ".tmp-" not in err  # the path asked for, not an atomic write's temporary name


def test_an_output_file_that_is_a_directory_is_named_with_the_fix(tmp_path, capsys):
    (tmp_path / "load.json").mkdir()
    assert cli(["perf-data", str(tmp_path / "load.json"), "--bundled"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ".tmp-" not in err, err
    assert f"cannot use {tmp_path / 'load.json'}: Is a directory; give a file path" in err
    assert [p.name for p in tmp_path.iterdir()] == ["load.json"]  # no temporary left


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["serv", "EXPORT"], "dit-deploy: error: unknown verb 'serv'; did you mean 'serve'? "),
        (["batch", "a.jsonl", "out", "--precison", "int8"],
         "dit-deploy batch: error: unrecognized arguments: --precison int8; did you mean "
         "--precision? (see dit-deploy batch --help)"),
        (["quantize", "EXPORT", "--precision", "int9"],
         "dit-deploy quantize: error: argument --precision: invalid choice: 'int9'"),
        (["serve", "EXPORT", "--http-port", "0"], "dit-deploy serve: error: argument --http-port"),
        # numbers out of range are refused while parsing, before any work
        (["quantize", "EXPORT", "--precision", "int8", "--percentile", "200"],
         "dit-deploy quantize: error: argument --percentile: must be in [0, 100], got 200.0"),
        (["quantize", "EXPORT", "--precision", "fp16", "--latency-runs", "-5"],
         "dit-deploy quantize: error: argument --latency-runs: must be >= 0, got -5"),
        (["export", "--pretrained", "m", "--out", "o", "--opset", "99"],
         "dit-deploy export: error: argument --opset: must be in 17..20, got 99"),
        (["export", "--pretrained", "m", "--out", "o", "--atol", "-1"],
         "dit-deploy export: error: argument --atol: must be >= 0, got -1.0"),
        (["validate", "EXPORT", "--min-mask-iou", "5"],
         "dit-deploy validate: error: argument --min-mask-iou: must be in [0, 1], got 5.0"),
        (["bench", "--batch", "a,b"],
         "dit-deploy bench: error: argument --batch: 'a,b' is not a comma-separated list"),
        (["bench", "--budget", "-1"], "dit-deploy bench: error: argument --budget: must be > 0"),
        (["run", "--batch", "1,0"],
         "dit-deploy run: error: argument --batch: every value must be >= 1, got '1,0'"),
        (["evaluate", "--model", "m", "--data", "d", "--max-samples", "-3"],
         "dit-deploy evaluate: error: argument --max-samples: must be >= 1, got -3"),
        (["engines", "EXPORT", "--max-batch", "0"],
         "dit-deploy engines: error: argument --max-batch: must be >= 1, got 0"),
    ],
)  # fmt: skip
def test_usage_mistakes_are_one_line_with_the_closest_spelling(argv, expected, capsys):
    """A mistyped verb, option or choice: one line (no usage block), the closest valid
    spelling, where the help is, exit 2; the verb's own parser answers, not the front's."""
    from dit_deploy.cli import main

    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith(expected), err
    if "invalid choice" in expected:
        assert "did you mean 'int8'?" in err


def test_help_states_each_default_once(capsys):
    from dit_deploy.cli import main

    for verb in ("run", "serve", "quantize", "batch", "bench"):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        doubled = re.findall(r"\([^()]*default[^()]*\) \(default: [^)]*\)", text)
        assert not doubled, (verb, doubled)
        assert "(default: " in text


def test_an_error_from_a_data_loader_worker_is_its_own_one_line():
    """PyTorch re-raises a worker's error with the worker's traceback in the message; the
    front prints the error's own message, on one line (evaluate on a missing image)."""
    from dit_deploy.cli import one_line
    from dit_deploy.errors import DatasetError

    worker = DatasetError(
        "Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        'call last):\n  File "worker.py", line 374, in _worker_loop\n    data = fetch(index)\n'
        "dit_deploy.errors.DatasetError: image of ref_id=390 is missing: a.png; pass image_dir"
    )
    assert one_line(worker) == "image of ref_id=390 is missing: a.png; pass image_dir"
    assert one_line(DatasetError("two\nlines")) == "two lines"


def test_validate_checks_the_recorded_hashes_before_it_runs(tiny_export, tmp_path, capsys):
    """A graph changed after export is an error naming it (what every other verb says), not
    a pass: validate re-checks what the manifest recorded, not whatever files are there."""
    export = copy_export(tiny_export, tmp_path / "e")
    graph = export / "mask_decoder.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    rc = cli(["validate", str(export), "--checkpoint", "never-loaded.pth"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert "mask_decoder.onnx" in err and "changed since it was written" in err


def test_a_manifest_naming_files_outside_its_export_is_refused(tiny_export, tmp_path, capsys):
    """An export is self-contained: a graph named by a path (even one whose hash matches) is
    refused by name, as the C++ reader does; so is a manifest that is not a JSON object."""
    import json

    export = copy_export(tiny_export, tmp_path / "e")
    data = json.loads((export / "manifest.json").read_text())
    data["graphs"]["dit_fused"]["file"] = f"../{tiny_export.name}/dit_fused.onnx"
    (tmp_path / tiny_export.name).mkdir()
    (export / "dit_fused.onnx").rename(tmp_path / tiny_export.name / "dit_fused.onnx")
    (export / "manifest.json").write_text(json.dumps(data))
    samples = Path(__file__).resolve().parents[1] / "dit_deploy" / "assets" / "samples"
    argv = ["segment", str(samples / "coffee.jpg"), "the cup", "--export", str(export)]
    assert cli(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "which is not a file of the export directory" in err, err
    (export / "manifest.json").write_text("[1, 2]")
    assert cli(argv) == 1
    assert "is a JSON list, not the object a manifest is" in capsys.readouterr().err


def test_segment_names_a_bad_image_before_it_exports_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    assert cli(["segment", str(tmp_path / "missing.jpg"), "the cat"]) == 1
    assert cli(["segment", str(tmp_path), "the cat"]) == 1
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith(f"image file not found: {tmp_path / 'missing.jpg'}"), err
    assert err[1].endswith(f"{tmp_path} is a directory; give an image file"), err
    assert not (tmp_path / "runs").exists()  # no bundled export was made first


def test_a_missing_checkpoint_is_named_before_the_vocabulary(tmp_path, capsys):
    argv = ["export", "--checkpoint", str(tmp_path / "none.pth"), "--out", str(tmp_path / "o")]
    assert cli(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"checkpoint not found: {tmp_path / 'none.pth'}" in err


def _documented_commands() -> list[tuple[str, str]]:
    """(where, command) for every ``dit-deploy ...`` line of each verb's --help examples and
    of the README's and docs' bash blocks (continuations joined; ``&&`` chains split;
    lines with a ``<placeholder>`` or ``...`` left out)."""
    import argparse

    root = Path(__file__).resolve().parents[1]
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    texts = [(f"dit-deploy {verb} --help", p.epilog or "") for verb, p in sub.choices.items()]
    texts.append(("dit-deploy --help", parser.epilog or ""))
    for md in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        texts += [(md.name, b) for b in re.findall(r"```bash\n(.*?)```", md.read_text(), re.S)]
    found = []
    for where, text in texts:
        for line in text.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                part = part.strip().removeprefix(".venv/bin/")
                if part.startswith("dit-deploy ") and "<" not in part and "..." not in part:
                    found.append((where, part))
    return found


def test_every_documented_command_parses(capsys):
    """The examples users copy: each one's verb and options exist and its values parse."""
    commands = _documented_commands()
    assert len(commands) >= 60, len(commands)
    parser = build_parser()
    bad = []
    for where, command in commands:
        try:
            parser.parse_args(shlex.split(command, comments=True)[1:])
        except SystemExit:
            bad.append(f"{where}: {command}: {capsys.readouterr().err.strip()}")
    assert not bad, "\n".join(bad)


def test_number_options_refuse_nan_and_infinity(capsys):
    from dit_deploy.cli import main

    for argv in (["bench", "--budget", "nan"], ["bench", "--duration", "inf"],
                 ["export", "--pretrained", "m", "--out", "o", "--atol", "nan"]):  # fmt: skip
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.count("\n") == 1 and "is not a finite number" in err


def test_run_quantize_without_an_export_says_to_export_first(tmp_path, capsys):
    assert cli(["run", "--only", "quantize", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no export yet" in err, err
    assert f"dit-deploy run --only export,quantize --out {tmp_path / 'r'}" in err
    assert not (tmp_path / "r" / "data").exists()  # nothing generated before the refusal
