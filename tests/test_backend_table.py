"""The backend table: one row per backend, read by every entry point.

A fake backend with a fake execution precision, registered as one row (its module written
here), must appear in the Predictor, the benchmark's plan, ``serve``, ``evaluate``,
``quantize``'s choices and the missing-extra message with no other edit; the rows the C++
runtime shares must read as in ``tests/fixtures/backend_table.json``.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dit_deploy.runtime import Export, Predictor
from dit_deploy.runtime.backends import open_backend
from dit_deploy.runtime.backends.table import (
    TABLE,
    BackendRow,
    Execution,
    backend_names,
    backend_row,
    default_backend,
    executions,
    precisions,
    register,
    unregister,
)

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "backend_table.json").read_text())
FAKE_MODULE = """
from dit_deploy.runtime.backends.onnxruntime import OnnxRuntimeBackend

OPENED = []


def open_graph(request):
    OPENED.append(request)
    return OnnxRuntimeBackend(request.path, device=request.device, threads=request.threads)


def unavailable_reason(precision, device):
    return None
"""


def test_rows_shared_with_the_cpp_runtime_read_as_the_fixture():
    for want in FIXTURE["rows"]:
        row = backend_row(want["name"])
        assert list(row.devices) == want["devices"]
        assert list(row.precisions) == want["precisions"]
        assert row.artifact == want["artifact"]
        assert row.cpu_numerics == want["cpu_numerics"]
    from dit_deploy.runtime.export import preferred_layouts

    for case in FIXTURE["default_layout"]:
        layout = next(x for x in preferred_layouts() if x in case["available"])
        assert layout == case["layout"]


def test_the_tables_derived_lists():
    assert backend_names() == ("onnxruntime", "openvino", "tensorrt")
    assert precisions() == ("fp32", "fp16", "int8", "bf16")
    assert executions() == {"openvino-bf16": ("openvino", "bf16")}
    assert default_backend("bf16") == "openvino" and default_backend("int8") == "onnxruntime"
    ov = backend_row("openvino")
    assert "runs on cpu, not cuda" in ov.unavailable_reason("fp32", "cuda:1")
    assert "does not run fp16" in ov.unavailable_reason("fp16", "cpu")
    assert backend_row("onnxruntime").unavailable_reason("int8", "cpu") is None
    with pytest.raises(Exception, match="unknown backend 'nope'; available: onnxruntime"):
        backend_row("nope")


@pytest.fixture
def fake_backend(tmp_path, monkeypatch, tiny_export):
    """A plug-in: its module, one table row, and an export holding its precision."""
    (tmp_path / "fake_dit_backend.py").write_text(textwrap.dedent(FAKE_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    row = BackendRow(
        name="fakert",
        opener="fake_dit_backend:open_graph",
        package="fake_dit_backend",
        extra="fakert",
        devices=("cpu",),
        precisions=("fp32", "fake8"),
        executions=(Execution("fake8", "fakert-fake8"),),
        probe="fake_dit_backend:unavailable_reason",
    )
    register(row)
    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    manifest = Export.open(export).manifest
    fake = {
        role: replace(spec, precision="fake8", execution="fakert-fake8")
        for role, spec in manifest.graphs.items()
    }
    manifest = replace(manifest, precisions={**manifest.precisions, "fake8": fake})
    Export.open(export).write(manifest)
    yield export
    unregister("fakert")
    sys.modules.pop("fake_dit_backend", None)
    assert "fakert" not in TABLE


def test_a_registered_backend_runs_everywhere_without_another_edit(fake_backend, capsys):
    import fake_dit_backend

    pairs = [(str(p), "the red circle") for p in sorted(_samples())[:2]]
    with Predictor(fake_backend, backend="fakert", precision="fake8", threads=1) as fake:
        got = fake.predict_batch(pairs)
    with Predictor(fake_backend, threads=1) as ort:
        want = ort.predict_batch(pairs)
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a.mask, b.mask)
    # the opener got the execution as the backend's mode, and the manifest's input specs
    assert {r.execution for r in fake_dit_backend.OPENED} == {"fake8"}
    assert all(r.inputs and r.precision == "fake8" for r in fake_dit_backend.OPENED)

    from dit_deploy.bench.cells import plan_cells

    cells = {c.label: c for c in plan_cells(fake_backend, torch_source=None, all_cells=True,
                                             engine=None)}  # fmt: skip
    for layout in ("fused", "split"):
        assert cells[f"fakert cpu fake8 ({layout})"].reason is None
        assert cells[f"fakert cpu fake8 ({layout})"].backend == "fakert"

    from dit_deploy.cli import build_parser
    from dit_deploy.serving.server import ServeOptions

    parser = build_parser()
    args = parser.parse_args(["serve", str(fake_backend), "--backend", "fakert",
                              "--precision", "fake8"])  # fmt: skip
    assert (args.backend, args.precision) == ("fakert", "fake8")
    ServeOptions(fake_backend, backend="fakert", precision="fake8").check()
    with pytest.raises(Exception, match="--backend fakert runs on cpu, not cuda"):
        ServeOptions(fake_backend, backend="fakert", device="cuda").check()
    args = parser.parse_args(["quantize", str(fake_backend), "--precision", "fake8"])
    assert args.precision == "fake8"
    pytest.importorskip("torch")  # evaluate's module is the training package's
    args = parser.parse_args(["evaluate", "--model", str(fake_backend), "--data", "d",
                              "--backend", "fakert"])  # fmt: skip
    assert args.backend == "fakert"
    from dit_deploy.training.evaluation import backends

    assert "fakert" in backends()

    from dit_deploy.extras import missing_extra

    missing = ModuleNotFoundError("no fake runtime")
    missing.name = "fake_dit_backend.kernels"
    assert missing_extra(missing) == (
        "needs the optional package 'fake_dit_backend': pip install 'dit-deploy[fakert]'"
    )


def test_open_backend_refuses_what_the_table_does_not_allow(tiny_export):
    graph = tiny_export / "dit_fused.onnx"
    with pytest.raises(Exception, match="execution mode of openvino"):
        open_backend("onnxruntime", graph, execution="openvino-bf16")
    with pytest.raises(Exception, match="unknown to this dit-deploy"):
        open_backend("openvino", graph, execution="openvino-fp8")
    with pytest.raises(Exception, match="runs on cuda or cuda:N|pass device='cuda'"):
        Predictor(tiny_export, backend="tensorrt", device="cpu")


def _samples() -> list[Path]:
    root = Path(__file__).resolve().parents[1] / "dit_deploy" / "assets" / "samples"
    return sorted(root.glob("*.jpg"))
