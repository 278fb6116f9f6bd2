"""ONNX export (split + fused) matches PyTorch; the torch-free runtime reproduces the model."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from dit_deploy.errors import ArtifactError, InputError, ValidationError
from dit_deploy.exporters.onnx_export import default_validation_pairs, run_export, torch_reference
from dit_deploy.exporters.validate import Tolerance
from dit_deploy.model.dit_model import DITModel
from dit_deploy.runtime import Predictor, read_manifest
from dit_deploy.runtime.backends.onnxruntime import OnnxRuntimeBackend

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def model(tiny_model) -> DITModel:
    return tiny_model


@pytest.fixture(scope="module")
def export_dir(tiny_export) -> Path:
    return tiny_export


def _pairs(n: int):
    pairs = default_validation_pairs()
    return (pairs * 2)[:n]


def test_export_checks_are_within_issue_tolerance(model, tmp_path):
    result = run_export(model, tmp_path / "e", layout="both", log=lambda *_: None)
    by_name = {c.name: c for c in result.checks}
    for name in (
        "mask_decoder.low_res_logits",
        "split_chain.low_res_logits",
        "dit_fused.low_res_logits",
    ):
        assert by_name[name].max_abs <= 1e-4, by_name[name].line()
        assert by_name[name].mask_iou >= 0.999
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [
        "dit_encoder.onnx",
        "dit_fused.onnx",
        "manifest.json",
        "mask_decoder.onnx",
        "text_encoder.onnx",
        "vocab.txt",
    ]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("layout", ["split", "fused"])
def test_runtime_logits_match_pytorch_real_and_random(model, export_dir, layout, batch):
    predictor = Predictor(export_dir, layout=layout)
    images, texts = zip(*_pairs(batch), strict=True)
    feeds, _ = predictor.prepare(images, texts)
    rng = np.random.default_rng(batch)
    random_feeds = {
        "image": rng.standard_normal(feeds["image"].shape).astype(np.float32),
        "input_ids": rng.integers(5, 120, feeds["input_ids"].shape).astype(np.int64),
        "attention_mask": np.ones_like(feeds["attention_mask"]),
    }
    for f in (feeds, random_feeds):
        ours = predictor.low_res_logits(f)
        ref = torch_reference(model, f)["low_res_logits"]
        assert np.abs(ours - ref).max() <= 1e-4


def test_predict_masks_agree_with_pytorch_model(model, export_dir):
    pairs = _pairs(3)
    reference = model.predict_batch(pairs)
    for layout in ("split", "fused"):
        got = Predictor(export_dir, layout=layout).predict_batch(pairs)
        for a, b in zip(got, reference, strict=True):
            assert a.mask.shape == b.mask.shape
            inter, union = np.logical_and(a.mask, b.mask).sum(), np.logical_or(a.mask, b.mask).sum()
            assert union == 0 or inter / union >= 0.999
            assert abs(a.score - b.score) < 1e-4


def test_one_image_many_expressions_and_threads(export_dir):
    predictor = Predictor(export_dir)
    image = _pairs(1)[0][0]
    pairs = [(image, t) for t in ("the red circle", "the left one", "the big square", "top")]
    serial = predictor.predict_batch(pairs)
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda p: predictor.predict(*p), pairs * 3))
    for i, result in enumerate(parallel):
        assert np.array_equal(result.mask, serial[i % 4].mask)


def test_graphs_are_clean_and_carry_metadata(export_dir):
    manifest = read_manifest(export_dir)
    for role, spec in manifest.graphs.items():
        graph = onnx.load(str(export_dir / spec.file))
        ops = {n.op_type for n in graph.graph.node}
        assert "ScatterND" not in ops, role
        assert not ops & {"Resize", "Upsample"}, f"{role}: position tables must be constants"
        meta = {p.key: p.value for p in graph.metadata_props}
        assert meta["dit.graph"] == role
        assert meta["dit.config_name"] == "layer_wise_tiny"
        assert meta["dit.max_tokens"] == "20" and meta["dit.mask_threshold"] == "0.35"
        assert json.loads(meta["dit.tokenizer"])["sha256"] == manifest.tokenizer["sha256"]
        assert graph.opset_import[0].version == 17
        names = [v.name for v in graph.graph.value_info]
        assert len(names) == len(set(names)), f"{role}: duplicate value_info"
    text_graph = onnx.load(str(export_dir / "text_encoder.onnx"))
    # only the first BERT layer: 2 LayerNorms per layer + 1 in the embeddings
    assert sum(n.op_type == "LayerNormalization" for n in text_graph.graph.node) == 3


def test_failed_validation_writes_nothing_and_lists_every_output(model, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValidationError) as err:
        run_export(
            model,
            out,
            layout="split",
            tolerance=Tolerance(atol=0.0, rtol=0.0, min_mask_iou=1.0),
            log=lambda *_: None,
        )
    message = str(err.value)
    assert "dit_encoder.image_embedding" in message and "split_chain.low_res_logits" in message
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary directory left behind


def test_existing_directory_needs_overwrite(model, export_dir):
    with pytest.raises(ArtifactError, match="exists; pass --overwrite"):
        run_export(model, export_dir, log=lambda *_: None)


def test_runtime_errors_name_file_and_fix(export_dir, tmp_path):
    with pytest.raises(ArtifactError, match="no manifest.json"):
        Predictor(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in export_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "dit_fused.onnx").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match=r"dit_fused.onnx \(fp32 graph dit_fused\) changed"):
        Predictor(broken, layout="fused")
    with pytest.raises(ArtifactError, match="cannot load .*dit_fused.onnx.*re-export"):
        Predictor(broken, layout="fused", verify=False)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["manifest_version"] = 99
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="manifest version 99"):
        Predictor(broken)
    manifest["manifest_version"] = 1
    (broken / "manifest.json").write_text(json.dumps(manifest))
    (broken / "vocab.txt").unlink()
    with pytest.raises(ArtifactError, match="missing its tokenizer vocabulary"):
        Predictor(broken)
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Predictor(broken)


def test_backend_rejects_wrong_types_and_shapes(export_dir):
    backend = OnnxRuntimeBackend(export_dir / "text_encoder.onnx")
    ids = np.zeros((2, 20), np.int64)
    with pytest.raises(InputError, match="dtype int32, expected int64"):
        backend.run({"input_ids": ids.astype(np.int32), "attention_mask": ids})
    with pytest.raises(InputError, match=r"shape \(2, 19\), expected \('batch', 20\)"):
        backend.run({"input_ids": ids[:, :19], "attention_mask": ids[:, :19]})
    with pytest.raises(InputError, match="expects"):
        backend.run({"input_ids": ids})


def test_runtime_runs_where_torch_cannot_be_imported(export_dir):
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, Block())
        import numpy as np
        from dit_deploy.runtime import Predictor
        p = Predictor({str(export_dir)!r})
        r = p.predict(np.full((90, 130, 3), 200, np.uint8), "the red circle")
        assert r.mask.shape == (90, 130)
        assert "torch" not in sys.modules
        print("ok")
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_cli_exit_codes(export_dir, tmp_path):
    cli = [sys.executable, str(Path(__file__).parents[1] / "export" / "to_onnx.py")]
    wrong = subprocess.run(
        cli
        + [
            "validate",
            str(export_dir),
            "--checkpoint",
            str(FIXTURES / "authors" / "e2e.pth"),
            "--config",
            "e2e_tiny",
            "--vocab",
            str(FIXTURES / "tiny_vocab.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert wrong.returncode == 1
    assert "error:" in wrong.stderr and "FAILED" in wrong.stderr and "Traceback" not in wrong.stderr
    missing = subprocess.run(
        cli
        + [
            "--checkpoint",
            str(tmp_path / "x.pth"),
            "--config",
            "e2e_tiny",
            "--vocab",
            str(FIXTURES / "tiny_vocab.txt"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 1 and "checkpoint not found" in missing.stderr
    assert not (tmp_path / "o").exists()


def test_torch_reference_is_deterministic(model):
    images, texts = zip(*_pairs(2), strict=True)
    feeds, _ = model.prepare(images, texts)
    a, b = torch_reference(model, feeds), torch_reference(model, feeds)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert torch.get_num_threads() >= 1
