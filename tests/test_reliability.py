"""Bad input, changed artifacts and killed runs: typed errors, checked hashes, atomic swaps.

A corpus by class (see docs/reliability.md): every case here failed or misbehaved before the
guard it tests existed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_export
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dit_deploy.artifact_dir import clean_inner_leftovers, pid_alive, recover, swap_in
from dit_deploy.cli import main as cli
from dit_deploy.errors import ArtifactError, CheckpointError, DITError, InputError
from dit_deploy.runtime import Predictor, read_manifest
from dit_deploy.runtime.manifest import verify_files

ROOT = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not pid_alive(proc.pid)
    return proc.pid


@pytest.fixture(scope="module")
def predictor(tiny_export):
    with Predictor(tiny_export, layout="fused") as p:
        yield p


# -- public API arguments ------------------------------------------------------------------
@pytest.mark.parametrize(
    "pairs",
    [None, "horse", b"x", 3, {"a": "b"}, [("a.jpg",)], [("a", "b", "c")], [1], [None], ("img", 5)],
)
def test_predict_batch_malformed_arguments_are_input_errors(predictor, pairs):
    with pytest.raises(InputError):
        predictor.predict_batch(pairs)


@pytest.mark.parametrize("kwargs", [{"max_batch": 0}, {"max_batch": "8"}, {"threads": -1}])
def test_predictor_bad_options_are_input_errors(tiny_export, kwargs):
    with pytest.raises(InputError):
        Predictor(tiny_export, **kwargs)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
_image = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=10),
    st.builds(
        lambda h, w, c, dt: np.zeros((h, w, c), dtype=dt),
        st.integers(0, 40),
        st.integers(0, 40),
        st.sampled_from([1, 3, 4, 5]),
        st.sampled_from([np.uint8, np.float32, np.int64, np.bool_]),
    ),
)
_text = st.one_of(st.none(), st.integers(), st.text(max_size=30), st.binary(max_size=8))
_pair = st.one_of(st.tuples(_image, _text), _json, st.tuples(_image))


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pairs=st.one_of(st.lists(_pair, max_size=4), _json))
def test_fuzz_predict_batch_raises_only_dit_errors(predictor, pairs):
    try:
        results = predictor.predict_batch(pairs)
    except DITError:
        return
    assert len(results) == len(pairs)
    for r in results:
        assert r.mask.dtype == bool and 0.0 <= r.score <= 1.0


# -- manifests: schema at load ---------------------------------------------------------------
def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@pytest.fixture(scope="module")
def manifest_data(tiny_export):
    return json.loads((tiny_export / "manifest.json").read_text())


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzz_manifest_structure_gives_a_result_or_a_typed_error(
    tiny_export, manifest_data, tmp_path_factory, data
):
    paths = [p for p in _paths(manifest_data) if p]
    path = data.draw(st.sampled_from(paths))
    value = data.draw(_json)
    broken = copy.deepcopy(manifest_data)
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    directory = tmp_path_factory.mktemp("m")
    for f in tiny_export.iterdir():
        (directory / f.name).symlink_to(f)
    (directory / "manifest.json").unlink()
    (directory / "manifest.json").write_text(json.dumps(broken))
    with contextlib.suppress(DITError):
        Predictor(directory, verify=False).predict(np.zeros((8, 8, 3), np.uint8), "the cat")


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("graphs", [], r"field graphs must be an object"),
        ("input_size", "512", r"field input_size must be an integer"),
        ("mask_threshold", True, r"field mask_threshold must be a number"),
        ("tokenizer", {"vocab_file": "vocab.txt"}, r"required field tokenizer.lowercase"),
        ("pixel_mean", [], r"field pixel_mean must be 3 finite numbers"),
        ("pixel_std", [0.2, 0.0, 0.2], r"field pixel_std must be positive"),
        ("input_size", 94, r"field input_size must be a positive multiple of 4"),
        ("max_tokens", 2, r"field max_tokens must be >= 3 and equal tokenizer.max_tokens"),
    ],
)
def test_manifest_errors_name_file_field_and_expectation(
    tiny_export, tmp_path, field, value, expected
):
    d = copy_export(tiny_export, tmp_path / "e")
    data = json.loads((d / "manifest.json").read_text())
    data[field] = value
    (d / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=expected) as err:
        read_manifest(d)
    assert "manifest.json" in str(err.value)


# -- recorded hashes are checked -----------------------------------------------------------
def test_changed_vocabulary_or_graph_is_refused_and_named(tiny_export, tmp_path):
    d = copy_export(tiny_export, tmp_path / "e")
    with open(d / "vocab.txt", "a") as f:
        f.write("extra\n")
    with pytest.raises(ArtifactError, match=r"vocab.txt \(tokenizer vocabulary\) changed"):
        Predictor(d)
    Predictor(d, verify=False).close()  # the trusted-deployment switch
    d2 = copy_export(tiny_export, tmp_path / "e2")
    graph = d2 / "mask_decoder.onnx"
    graph.write_bytes(graph.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match=r"mask_decoder.onnx \(fp32 graph mask_decoder\)"):
        Predictor(d2, layout="split")
    Predictor(d2, layout="fused").close()  # only the graphs a layout uses are checked


def test_reexport_replaces_a_truncated_export(tmp_path):
    from dit_deploy.exporters.onnx_export import export_pretrained

    out = tmp_path / "export"
    logs: list[str] = []
    assert export_pretrained("dit-tiny-synthetic", out, logs.append) is True
    assert export_pretrained("dit-tiny-synthetic", out, logs.append) is False  # valid: reused
    graph = out / "dit_encoder.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    assert export_pretrained("dit-tiny-synthetic", out, logs.append) is True
    assert any("not reusable" in line and "dit_encoder.onnx" in line for line in logs)
    manifest = read_manifest(out)
    verify_files(out, manifest, list(manifest.graphs), "fp32")


# -- atomic replacement and leftovers ------------------------------------------------------
def test_swap_and_recover_after_a_kill_between_the_renames(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "a").write_text("old")
    pid = _dead_pid()
    aside = tmp_path / f".export.old-{pid}-x"
    os.rename(target, aside)  # the state a kill between the two renames leaves
    stale_tmp = tmp_path / f".export.export-{pid}-abc"
    stale_tmp.mkdir()
    live_tmp = tmp_path / f".export.export-{os.getpid()}-abc"
    live_tmp.mkdir()
    recover(target)
    assert (target / "a").read_text() == "old"
    assert not aside.exists() and not stale_tmp.exists()
    assert live_tmp.exists()  # a running writer's work is never touched
    new = tmp_path / "new"
    new.mkdir()
    (new / "a").write_text("new")
    swap_in(new, target)
    assert (target / "a").read_text() == "new" and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["export", live_tmp.name])


def test_dead_writers_leftovers_inside_an_export_are_cleaned(tmp_path):
    pid = _dead_pid()
    (tmp_path / f".quantize.int8-{pid}-zz").mkdir()
    (tmp_path / f".manifest.json.tmp-{pid}-q").write_text("{")
    (tmp_path / f".quantize.fp16-{os.getpid()}-zz").mkdir()
    removed = clean_inner_leftovers(tmp_path)
    assert len(removed) == 2
    assert [p.name for p in tmp_path.iterdir()] == [f".quantize.fp16-{os.getpid()}-zz"]


KILLED_EXPORT = """
import sys
from dit_deploy.exporters.onnx_export import run_export
from dit_deploy.model.dit_model import DITModel
fixtures = sys.argv[2]
model = DITModel.from_checkpoint(fixtures + "/authors/layer_wise.pth", config="layer_wise_tiny",
                                 vocab=fixtures + "/tiny_vocab.txt")
print("loaded", flush=True)
run_export(model, sys.argv[1], layout="both", overwrite=True, log=lambda m: print(m, flush=True))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "phase",
    [
        "text_encoder.onnx",  # the first graph is in the work directory, the others to come
        "dit_fused.onnx",  # every graph written, validation against PyTorch running
        "max|d|",  # validation reported its first output; the swap is near
    ],
)
def test_kill_9_during_reexport_leaves_a_complete_export(tiny_export, tmp_path, phase):
    out = copy_export(tiny_export, tmp_path / "tiny")
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_EXPORT, str(out), str(ROOT / "tests" / "fixtures")],
        stdout=subprocess.PIPE,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    seen = []
    for line in proc.stdout:  # the export's own log lines mark its phases
        seen.append(line.decode().strip())
        if phase in seen[-1]:
            break
    assert phase in seen[-1], seen  # the phase was reached ...
    assert proc.poll() is None  # ... and the export was still running when killed
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    recover(out)
    manifest = read_manifest(out)  # old or new, never a mix: every graph matches its hash
    verify_files(out, manifest, list(manifest.graphs), "fp32")
    if {f.name: f.read_bytes() for f in out.iterdir()} != before:
        assert set(before) == {f.name for f in out.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # leftovers cleaned


# -- checkpoints -----------------------------------------------------------------------------
class _Payload:
    def __reduce__(self):
        return (print, ("this would run",))


def test_code_running_checkpoint_is_refused_in_one_clean_line(tmp_path):
    torch = pytest.importorskip("torch")
    from dit_deploy.model.checkpoint import read_torch_file

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "x": _Payload()}, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(CheckpointError) as err:
        read_torch_file(path)
    message = str(err.value)
    assert "holds executable code" in message and "will not be loaded" in message
    assert "\n" not in message and "\x1b" not in message and "weights_only=False" not in message


# -- command lines ---------------------------------------------------------------------------
def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tiny_export, tmp_path, capsys):
    d = copy_export(tiny_export, tmp_path / "e")
    (d / "dit_fused.onnx").write_bytes(b"\x08\x01garbage")
    code = cli(["quantize", str(d), "--precision", "fp16", "--eval-size", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "dit_fused.onnx (fp32 graph dit_fused) changed" in err
    assert cli(["--debug", "quantize", str(d), "--precision", "fp16", "--quiet"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_cli_checks_options_before_any_work(tiny_export, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(["quantize", str(tiny_export), "--precision", "int8", "--calib-size", "lots"])
    assert exit_.value.code == 2 and "--calib-size" in capsys.readouterr().err
    code = cli(["quantize", str(tiny_export), "--precision", "fp16", "--json", str(tmp_path)])
    assert code == 1 and "is a directory" in capsys.readouterr().err
    missing = tmp_path / "no" / "such" / "r.json"
    code = cli(["quantize", str(tiny_export), "--precision", "fp16", "--json", str(missing)])
    assert code == 1 and "not writable" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    code = cli(["export", "--pretrained", "dit-tiny-synthetic", "--out", str(tmp_path / "file")])
    assert code == 1 and "is a file" in capsys.readouterr().err


def test_atomic_writes_and_work_dirs_get_the_modes_open_and_mkdir_give(tmp_path):
    import os
    import stat

    from dit_deploy.artifact_dir import work_dir
    from dit_deploy.atomic import write_text_atomic

    old = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "manifest.json", "{}")
        made = work_dir(tmp_path / "export", "export")
    finally:
        os.umask(old)
    # a server running as another user must read an export (temporaries start private)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(made.stat().st_mode) == 0o755
