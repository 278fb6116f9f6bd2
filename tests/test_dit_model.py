"""DITModel end to end: the authors' checkpoint format + a real BERT-family text encoder
(MiniLM) + a real photograph -> a mask at the photograph's size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dit_deploy import CheckpointError, DITModel, ImageError, TextError
from dit_deploy.model import get_config
from dit_deploy.model.checkpoint import text_encoder_config_from_dir

SAMPLES = Path(__file__).parents[1] / "dit_deploy" / "assets" / "samples"


@pytest.fixture(scope="module")
def minilm_model(minilm_dir, tmp_path_factory) -> DITModel:
    """A tiny DIT whose text branch is MiniLM's real layer 1, saved and re-loaded the way a
    user brings an authors' checkpoint (DDP prefix, the unused parameters included)."""
    torch.manual_seed(0)
    config = get_config(
        "layer_wise_tiny", text_encoder=vars(text_encoder_config_from_dir(minilm_dir))
    )
    init = DITModel.from_sam(None, config, text_encoder=minilm_dir)
    with torch.no_grad():  # make the text matter (probs start at zero)
        for prob in init.network.visual_encoder.probs:
            prob.weight.normal_(0, 0.2)
    state = {f"module.{k}": v for k, v in init.network.state_dict().items()}
    state["module.query_embeddings"] = torch.zeros(1, 4, 384)
    state["module.lang_encoder.bert.pooler.dense.weight"] = torch.zeros(384, 384)
    path = tmp_path_factory.mktemp("ckpt") / "dit_minilm.pth"
    torch.save(
        {"epoch": 3, "state_dict": state, "optimizer": {}, "scheduler": {}, "lr": 1e-4}, path
    )
    return DITModel.from_checkpoint(path, config=config, text_encoder=minilm_dir)


def test_predict_on_a_real_photograph(minilm_model):
    result = minilm_model.predict(SAMPLES / "chelsea.jpg", "the cat lying on the left")
    assert result.mask.shape == (300, 451) and result.mask.dtype == bool
    assert 0.0 <= result.score <= 1.0
    report = minilm_model.load_reports[-1]
    assert "query_embeddings" in report.ignored_unused
    assert "lang_encoder.bert.pooler.dense.weight" in report.ignored_unused


def test_batch_matches_single_calls_and_text_changes_logits(minilm_model):
    pairs = [
        (SAMPLES / "coffee.jpg", "the cup"),
        (SAMPLES / "coffee.jpg", "the saucer on the right"),
        (SAMPLES / "chelsea.jpg", "cat"),
    ]
    batch = minilm_model.predict_batch(pairs)
    for (image, text), got in zip(pairs, batch, strict=True):
        single = minilm_model.predict(image, text)
        assert np.array_equal(single.mask, got.mask)
        assert got.mask.shape == ((400, 600) if "coffee" in str(image) else (300, 451))
    feeds, _ = minilm_model.prepare(
        [SAMPLES / "coffee.jpg"] * 2, ["the cup", "the saucer on the right"]
    )
    logits = minilm_model.low_res_logits(feeds)
    assert np.abs(logits[0] - logits[1]).max() > 1e-3


def test_bad_inputs_are_typed(minilm_model, tmp_path):
    with pytest.raises(ImageError, match="not found"):
        minilm_model.predict(tmp_path / "missing.jpg", "the cat")
    with pytest.raises(TextError, match="empty"):
        minilm_model.predict(SAMPLES / "chelsea.jpg", "   ")


def test_unknown_pretrained_lists_bundled_models():
    with pytest.raises(CheckpointError, match=r"bundled: \['dit-tiny-synthetic'\]"):
        DITModel.from_pretrained("no-such-model")
