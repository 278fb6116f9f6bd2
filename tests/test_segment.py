"""``dit-deploy segment IMAGE TEXT [TEXT ...]``: one image, several expressions, the masks
and overlays written, the numbers printed (also as JSON), the Predictor's masks exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from dit_deploy.cli import main
from dit_deploy.mask_codec import decode_png
from dit_deploy.runtime import Predictor

SAMPLES = Path(__file__).resolve().parents[1] / "dit_deploy" / "assets" / "samples"


def test_segment_writes_each_mask_and_overlay_and_matches_the_predictor(
    tiny_export, tmp_path, capsys
):
    image, texts = SAMPLES / "coffee.jpg", ["the cup", "the table on the left"]
    argv = ["segment", str(image), *texts, "--export", str(tiny_export),
            "--out-dir", str(tmp_path / "out"), "--json"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["export"] == str(tiny_export) and doc["precision"] == "fp32" and doc["ms"] > 0
    want = Predictor(tiny_export).predict_batch([(image, t) for t in texts])
    size = Image.open(image).size
    for k, (got, ref, text) in enumerate(zip(doc["results"], want, texts, strict=True)):
        assert got["text"] == text and got["score"] == ref.score  # the same batch
        mask = decode_png(Path(got["mask_png"]).read_bytes())
        assert np.array_equal(mask, ref.mask) and got["area"] == float(ref.mask.mean())
        assert Path(got["mask_png"]).name == f"coffee.{k}.mask.png"
        assert Image.open(got["overlay_png"]).size == size  # at the image's own size
    # the plain form: one header line, one line per expression naming both files
    assert main(argv[:-1]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + len(texts) and lines[1].startswith('  "the cup": score ')
    assert "coffee.1.overlay.png" in lines[2]


def test_segment_errors_are_one_line(tiny_export, tmp_path, capsys):
    assert main(["segment", str(tmp_path / "nope.jpg"), "x", "--export", str(tiny_export)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image file not found" in err[0]
    image = SAMPLES / "coffee.jpg"
    assert main(["segment", str(image), "   ", "--export", str(tiny_export),
                 "--out-dir", str(tmp_path / "o")]) == 1  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "segment: error:" in err[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_segment_takes_a_model_and_exports_it_once(tmp_path, monkeypatch, capsys):
    """``--model NAME``: the bundled model exported on first use under runs/exports, reused
    the second time; ``--model`` with ``--export`` is one line."""
    monkeypatch.chdir(tmp_path)
    argv = ["segment", str(SAMPLES / "coffee.jpg"), "the cup", "--model", "dit-tiny-synthetic",
            "--json"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["export"] == str(Path("runs") / "exports" / "dit-tiny-synthetic")
    manifest = tmp_path / doc["export"] / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    assert main(argv) == 0 and manifest.stat().st_mtime_ns == stamp  # reused, not redone
    capsys.readouterr()
    assert main([*argv, "--export", str(tmp_path)]) == 1
    assert "pass --export or --model, not both" in capsys.readouterr().err
