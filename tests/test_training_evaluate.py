"""training/evaluate.py: a PyTorch model and its ONNX export give the same metrics through the
same evaluation code; batching and the CLI's errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from dit_deploy.cli import verb_main  # noqa: E402
from dit_deploy.model.checkpoint import save_pretrained  # noqa: E402
from dit_deploy.model.dit_model import DITModel  # noqa: E402

main_evaluate = verb_main("evaluate")
from dit_deploy.training.evaluation import EvalOptions, evaluate_model  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
METRICS = ("mIoU", "oIoU", "prec@0.5", "prec@0.6", "prec@0.7", "prec@0.8", "prec@0.9")


@pytest.fixture(scope="module")
def model_and_export(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The bundled trained model as a model directory and as an ONNX export, and synthetic
    validation expressions it has not seen (10 scenes)."""
    from dit_deploy.data.synthetic import generate
    from dit_deploy.exporters.onnx_export import run_export

    root = tmp_path_factory.mktemp("eval")
    model = DITModel.from_pretrained("dit-tiny-synthetic")
    model_dir = save_pretrained(model.network, root / "model", model.vocab_file)
    export_dir = root / "export"
    run_export(model, export_dir, layout="fused", log=lambda *_: None)
    data = generate(root / "syn", n_train=0, n_val=10, seed=11)
    return model_dir, export_dir, data


def test_torch_and_onnx_export_give_the_same_metrics(model_and_export) -> None:
    model_dir, export_dir, data = model_and_export
    torch_report = evaluate_model(
        EvalOptions(
            model=str(model_dir),
            data=str(data),
            backend="torch",
            device="cpu",
            batch_size=4,
            workers=0,
            threads=1,
        )
    )
    onnx_report = evaluate_model(
        EvalOptions(model=str(export_dir), data=str(data), batch_size=3, workers=2, threads=1)
    )
    assert onnx_report["backend"] == "onnxruntime" and torch_report["backend"] == "torch"
    assert torch_report["count"] == onnx_report["count"] >= 12
    assert 0.2 < torch_report["mIoU"] < 1.0  # a real model: neither empty nor trivial masks
    for k in METRICS:  # measured: identical (fp32 ONNX Runtime vs PyTorch, 17 expressions)
        assert onnx_report[k] == pytest.approx(torch_report[k], abs=5e-4), k
    # batching does not change the numbers
    one = evaluate_model(
        EvalOptions(
            model=str(model_dir),
            data=str(data),
            backend="torch",
            device="cpu",
            batch_size=1,
            workers=0,
            threads=1,
            max_samples=5,
        )
    )
    five = evaluate_model(
        EvalOptions(
            model=str(model_dir),
            data=str(data),
            backend="torch",
            device="cpu",
            batch_size=5,
            workers=0,
            threads=1,
            max_samples=5,
        )
    )
    assert one["count"] == five["count"] == 5
    for k in METRICS:
        assert one[k] == pytest.approx(five[k], abs=1e-9), k


def test_evaluate_cli_json_and_one_line_errors(model_and_export, capsys) -> None:
    model_dir, export_dir, data = model_and_export
    args = ["--data", str(data), "--threads", "1", "--max-samples", "4", "--workers", "0"]
    assert main_evaluate(["--model", str(export_dir), *args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["count"] == 4 and report["backend"] == "onnxruntime"
    assert main_evaluate(["--model", str(model_dir), *args, "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "mIoU" in table and "torch" in table and "{" not in table
    cases = [
        (["--model", str(export_dir), "--backend", "torch"], "is an export"),
        (["--model", str(model_dir), "--backend", "onnxruntime"], "not an export directory"),
        (["--model", str(model_dir), "--precision", "int8", "--device", "cpu"], "--precision"),
        (["--model", str(export_dir), "--precision", "int7"], "int7"),
    ]
    for extra, match in cases:
        assert main_evaluate([*extra, *args]) == 1, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0]
        assert err[0].startswith("dit-deploy evaluate: error: ")
    with pytest.raises(SystemExit) as info:  # a bad number is refused while parsing
        main_evaluate(["--model", str(model_dir), *args, "--batch-size", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1
    assert "argument --batch-size: must be >= 1, got 0" in err[0]
