"""The PyTorch CUDA reference on a GPU (marked ``cuda``: no TensorRT needed): fp32 matches
the CPU, fp16/bf16 autocast stay close to fp32, and a few AMP training steps run with NCCL
on one GPU. Skipped with the reason where no GPU is present (this project's CI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gpu_boundary import gpu_boundary  # noqa: E402
from test_training import tiny_bert_fixture, tiny_config, tiny_data_fixture  # noqa: E402,F401

SAMPLES = Path(__file__).resolve().parents[1] / "dit_deploy" / "assets" / "samples"


@pytest.fixture(scope="module")
def reference():
    from dit_deploy.model.dit_model import DITModel

    model = DITModel.from_pretrained("dit-tiny-synthetic")
    samples = [str(SAMPLES / "chelsea.jpg"), str(SAMPLES / "coffee.jpg")]
    feeds, _ = model.prepare(samples, ["the cat", "the cup"])
    return model, feeds, model.low_res_logits(feeds)


@pytest.mark.cuda
def test_cuda_fp32_matches_cpu(reference):
    model, feeds, cpu = reference
    gpu_boundary(need_tensorrt=False)
    gpu = model.to("cuda").low_res_logits(feeds)
    model.to("cpu")
    assert np.abs(gpu - cpu).max() < 1e-2


@pytest.mark.cuda
@pytest.mark.parametrize(("dtype", "tol"), [("float16", 0.15), ("bfloat16", 0.5)])
def test_cuda_autocast_stays_close_to_fp32(reference, dtype, tol):
    model, feeds, cpu = reference
    autocast_dtype = getattr(torch, dtype)
    gpu_boundary(need_tensorrt=False)
    model.to("cuda")
    with torch.autocast("cuda", dtype=autocast_dtype):
        low = model.low_res_logits(feeds)
    model.to("cpu")
    assert np.isfinite(low).all() and np.abs(low - cpu).max() < tol


@pytest.mark.cuda
def test_amp_training_steps_with_nccl_on_one_gpu(tiny_data, tiny_bert, tmp_path):  # noqa: F811
    from dit_deploy.training.launch import spawn

    cfg = tiny_config(
        tiny_data, tiny_bert, tmp_path / "run", **{"optim.amp": "bf16", "device": "cuda"}
    )
    gpu_boundary(need_tensorrt=False)
    [result] = spawn(cfg, nprocs=1, result_dir=tmp_path / "results")
    losses = result["losses"]
    assert len(losses) >= 4 and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
