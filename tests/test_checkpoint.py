"""Strict checkpoint loading: every problem is named; the allow-list is explicit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dit_deploy.errors import CheckpointError, ConfigError
from dit_deploy.model import get_config, list_configs
from dit_deploy.model.checkpoint import (
    load_dit_checkpoint,
    load_pretrained_weights,
    load_sam_checkpoint,
    load_text_encoder,
    read_pretrained_config,
    save_pretrained,
)
from dit_deploy.model.dit import build_dit

AUTHORS = Path(__file__).parent / "fixtures" / "authors"


def _authors_state() -> dict[str, torch.Tensor]:
    return torch.load(AUTHORS / "e2e.pth", weights_only=True)["state_dict"]


def _save(tmp_path: Path, state: dict, name: str = "ckpt.pth") -> Path:
    path = tmp_path / name
    torch.save({"epoch": 1, "state_dict": state}, path)
    return path


@pytest.fixture
def model():
    return build_dit(get_config("e2e_tiny")).eval()


def test_missing_key_is_named(tmp_path, model):
    state = _authors_state()
    del state["visual_encoder.probs.2.weight"]
    with pytest.raises(
        CheckpointError, match=r"missing keys \(1\): visual_encoder\.probs\.2\.weight"
    ):
        load_dit_checkpoint(model, _save(tmp_path, state))


def test_renamed_key_is_named_both_ways(tmp_path, model):
    state = _authors_state()
    state["mask_decoder.iou_tokens.weight"] = state.pop("mask_decoder.iou_token.weight")
    with pytest.raises(CheckpointError) as err:
        load_dit_checkpoint(model, _save(tmp_path, state))
    assert "missing keys (1): mask_decoder.iou_token.weight" in str(err.value)
    assert "unexpected keys (1): mask_decoder.iou_tokens.weight" in str(err.value)


def test_extra_key_is_named(tmp_path, model):
    state = _authors_state()
    state["visual_encoder.extra_adapter.weight"] = torch.zeros(3)
    with pytest.raises(
        CheckpointError, match=r"unexpected keys \(1\): visual_encoder\.extra_adapter"
    ):
        load_dit_checkpoint(model, _save(tmp_path, state))


def test_shape_mismatch_is_named(tmp_path, model):
    state = _authors_state()
    state["text_proj.weight"] = torch.zeros(32, 16)
    with pytest.raises(
        CheckpointError, match=r"text_proj\.weight: checkpoint \(32, 16\) vs model \(32, 32\)"
    ):
        load_dit_checkpoint(model, _save(tmp_path, state))


def test_wrong_variant_size_is_reported(tmp_path):
    textproj = build_dit(get_config("layer_wise_tiny"))
    with pytest.raises(CheckpointError, match="does not match DIT config 'layer_wise_tiny'"):
        load_dit_checkpoint(textproj, AUTHORS / "layer_wise_textproj.pth")


def test_allow_list_is_reported_not_silent(model):
    report = load_dit_checkpoint(model, AUTHORS / "e2e.pth")
    assert "query_embeddings" in report.ignored_unused
    assert "self_attention.in_proj_weight" in report.ignored_unused
    assert "lang_encoder.bert.pooler.dense.weight" in report.ignored_unused
    assert "lang_encoder.bert.encoder.layer.1.output.dense.weight" in report.ignored_unused
    assert report.kept_initialisation == []


def test_used_bert_layer_is_not_allow_listed(tmp_path, model):
    """Layer 0 is the one DIT reads: it may not go missing."""
    state = _authors_state()
    del state["lang_encoder.bert.encoder.layer.0.output.dense.weight"]
    with pytest.raises(CheckpointError, match="layer.0.output.dense.weight"):
        load_dit_checkpoint(model, _save(tmp_path, state))


def test_pickled_code_is_refused(tmp_path, model):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, path)
    with pytest.raises(CheckpointError, match="holds executable code") as err:
        load_dit_checkpoint(model, path)
    assert "weights_only=False" not in str(err.value) and "\n" not in str(err.value)


def test_missing_and_corrupt_files(tmp_path, model):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_dit_checkpoint(model, tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_dit_checkpoint(model, bad)


def _sam_state(config_name: str = "e2e_tiny") -> dict[str, torch.Tensor]:
    """A SAM-format state dict: image_encoder.* + prompt_encoder.* + mask_decoder.*."""
    net = build_dit(get_config(config_name))
    out = {}
    for key, value in net.state_dict().items():
        if key.startswith("visual_encoder.") and ".probs." not in key and "prob_text" not in key:
            out["image_encoder." + key[len("visual_encoder.") :]] = torch.randn_like(value)
        elif key.startswith(("prompt_encoder.", "mask_decoder.")):
            out[key] = torch.randn_like(value)
    return out


def test_sam_checkpoint_initialises_encoder_and_decoder(tmp_path, model):
    sam = _sam_state()
    path = tmp_path / "sam_vit_tiny.pth"
    torch.save(sam, path)
    report = load_sam_checkpoint(model, path)
    state = model.state_dict()
    torch.testing.assert_close(
        state["visual_encoder.blocks.1.attn.rel_pos_h"],
        sam["image_encoder.blocks.1.attn.rel_pos_h"],
    )
    torch.testing.assert_close(
        state["mask_decoder.iou_token.weight"], sam["mask_decoder.iou_token.weight"]
    )
    assert "visual_encoder.probs.0.weight" in report.kept_initialisation
    assert torch.count_nonzero(state["visual_encoder.probs.0.weight"]) == 0  # DIT's zero init


def test_sam_checkpoint_with_unknown_key_fails(tmp_path, model):
    sam = _sam_state()
    sam["image_encoder.blocks.0.attn.bogus"] = torch.zeros(1)
    path = tmp_path / "sam.pth"
    torch.save(sam, path)
    with pytest.raises(CheckpointError, match="visual_encoder.blocks.0.attn.bogus"):
        load_sam_checkpoint(model, path)


def test_sam_checkpoint_given_as_dit_is_explained(tmp_path, model):
    path = tmp_path / "sam.pth"
    torch.save(_sam_state(), path)
    with pytest.raises(CheckpointError, match="is a SAM checkpoint"):
        load_dit_checkpoint(model, path)


def test_our_format_round_trip(tmp_path, model):
    load_dit_checkpoint(model, AUTHORS / "e2e.pth")
    out = save_pretrained(model, tmp_path / "m", vocab_file=None)
    config = read_pretrained_config(out)
    assert config == model.config
    again = build_dit(config)
    load_pretrained_weights(again, out)
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_text_encoder_from_hf_directory_matches_transformers(minilm_dir):
    """Only layer 1 of MiniLM is built; its output equals transformers' hidden_states[1]."""
    from transformers import AutoModel

    from dit_deploy.model.checkpoint import text_encoder_config_from_dir

    text_cfg = text_encoder_config_from_dir(minilm_dir)
    assert (text_cfg.hidden_size, text_cfg.vocab_size) == (384, 30522)
    config = get_config("layer_wise_tiny", text_encoder=text_cfg.__dict__)
    net = build_dit(config).eval()
    load_text_encoder(net, minilm_dir)
    assert len(net.lang_encoder.bert.encoder.layer) == 1
    ids = torch.tensor([[101, 1996, 2417, 3543, 2006, 1996, 2187, 102] + [0] * 12])
    mask = (ids > 0).long()
    full = AutoModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    with torch.inference_mode():
        ref = full(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[1]
        ours = net.encode_text(ids, mask)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_text_encoder_of_wrong_width_is_refused(minilm_dir):
    net = build_dit(get_config("layer_wise_tiny"))
    with pytest.raises(ConfigError, match="hidden_size: model 32 vs"):
        load_text_encoder(net, minilm_dir)


def test_registry_covers_variants_and_sizes():
    names = set(list_configs())
    for size in ("vit_b", "vit_l", "vit_h", "tiny"):
        for variant in ("layer_wise", "e2e"):
            assert f"{variant}_{size}" in names
    b = get_config("layer_wise_vit_b")
    assert (b.encoder.embed_dim, b.encoder.depth, b.encoder.global_attn_indexes) == (
        768,
        12,
        (2, 5, 8, 11),
    )
    assert (b.input_size, b.max_tokens, b.mask_threshold, b.grid_size) == (512, 20, 0.35, 32)
    assert not b.projects_text
    assert get_config("layer_wise_vit_h").projects_text  # BERT 768 -> ViT-H 1280


def test_unknown_config_lists_choices():
    with pytest.raises(ConfigError, match="registered: layer_wise_vit_b"):
        get_config("layer_wise_vit_x")


def test_vit_b_parameter_shapes_match_sam_and_dit():
    """Shapes only (meta device): the SAM ViT-B tables keep their 1024-px build shapes."""
    with torch.device("meta"):
        net = build_dit(get_config("layer_wise_vit_b"))
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["visual_encoder.pos_embed"] == (1, 64, 64, 768)
    assert shapes["visual_encoder.blocks.0.attn.rel_pos_h"] == (27, 64)  # window 14
    assert shapes["visual_encoder.blocks.2.attn.rel_pos_h"] == (127, 64)  # global, 1024 px
    assert shapes["visual_encoder.probs.11.weight"] == (768, 768)
    assert shapes["text_proj.weight"] == (256, 768)
    assert "lang_encoder.bert.encoder.layer.1.attention.self.query.weight" not in shapes
