"""Training on GPUs and nodes, checked on CPUs with gloo: resume on another layout without a
shared directory, rank-0 load + broadcast, precision change on resume, unused parameters
frozen instead of DDP's per-step search, foreach EMA, AMP choice, per-device RNG, activation
checkpointing, the final test-split scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("pycocotools")

from test_training import (  # noqa: E402, F401  (fixtures shared with test_training)
    keep_torch_threads_fixture,
    tiny_bert_fixture,
    tiny_config,
    tiny_data_fixture,
)

from dit_deploy.model import build_dit, get_config  # noqa: E402
from dit_deploy.training import trainer as trainer_mod  # noqa: E402
from dit_deploy.training.ema import ModelEMA  # noqa: E402
from dit_deploy.training.trainer import (  # noqa: E402
    STATE_FILE,
    TEST_METRICS_FILE,
    load_train_state,
    resolve_amp,
    restore_scaler,
    train,
    unused_parameters,
)

#: SAM modules DIT's loss never reaches (prompt points, mask input, IoU head): 21 tensors
UNUSED_PREFIXES = (
    "prompt_encoder.point_embeddings.",
    "prompt_encoder.not_a_point_embed.",
    "prompt_encoder.mask_downscaling.",
    "mask_decoder.iou_prediction_head.",
)


# ------------------------------------------------------------------------- multi-process


def test_resume_on_another_layout_without_a_shared_directory(
    tiny_data: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    """1 node x 2 processes, cut after one epoch, resumed as 2 nodes x 1 process where only
    rank 0's node has the checkpoint: the run continues exactly as the uninterrupted one."""
    from dit_deploy.training.launch import spawn

    ref_cfg = tiny_config(tiny_data, tiny_bert, tmp_path / "ref", log_every=1)
    ref = spawn(ref_cfg, 2, tmp_path / "r_ref")
    cut_cfg = tiny_config(tiny_data, tiny_bert, tmp_path / "cut", stop_after_epochs=1, log_every=3)
    cut = spawn(cut_cfg, 2, tmp_path / "r_cut")
    steps = len(cut[0]["losses"])
    assert steps >= 2 and cut[0]["losses"] == ref[0]["losses"][:steps]

    node0 = tmp_path / "node0"  # what only rank 0's machine sees
    node0.mkdir()
    (tmp_path / "cut" / "last").rename(node0 / "last")
    two_nodes = {r: {"LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"} for r in range(2)}
    overrides = {
        0: {"resume": str(node0 / "last"), "output_dir": str(node0 / "out")},
        1: {"resume": str(tmp_path / "node1" / "last"), "output_dir": str(tmp_path / "node1")},
    }
    # one torch thread per process in every run (cpu_threads is summed over local ranks)
    res_cfg = tiny_config(tiny_data, tiny_bert, tmp_path / "unused", cpu_threads=1)
    res = spawn(res_cfg, 2, tmp_path / "r_res", env=two_nodes, overrides=overrides)
    for r in range(2):
        assert res[r]["losses"] == ref[r]["losses"][steps:]
        for k, v in ref[r]["state"].items():
            assert torch.equal(v, res[r]["state"][k]), k
    assert not (tmp_path / "node1").exists()  # rank 1 neither read nor wrote a directory
    state = load_train_state(node0 / "out" / "last")
    assert state["epoch"] == 1 and state["amp"] == "off" and len(state["rng"]) == 2
    # the unused SAM tensors were found once and frozen (no find_unused_parameters)
    assert len(ref[0]["unused"]) == 21 and all(
        n.startswith(UNUSED_PREFIXES) for n in ref[0]["unused"]
    )


def test_rank0_load_broadcast_and_ddp_without_unused_search(tmp_path: Path) -> None:
    import torch.multiprocessing as mp
    from training_workers import collectives_worker

    from dit_deploy.training.launch import free_port

    missing = tmp_path / "nowhere" / "last"
    mp.spawn(collectives_worker, args=(free_port(), str(tmp_path), str(missing)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    a, b = r0["state"], r1["state"]
    assert torch.equal(a["model"]["w"], b["model"]["w"]) and b["model"]["n"].item() == 7
    assert b["rng"][0]["torch"].dtype == torch.uint8 and b["rng"][0]["pos"] == 3
    assert b["rng"][1]["h"].dtype == torch.float16 and b["epoch"] == 4 and b["note"] == "x"
    assert isinstance(b["pair"], tuple) and b["pair"][0].dtype == torch.bfloat16
    assert b["pair"][1] == 1.5
    for r in (r0, r1):  # rank 0's missing file is an error on every rank, not a hang
        assert "does not exist" in r["error"] and "rank 0" in r["error"]
        assert r["unfrozen"] != "trained" and "reduction" in r["unfrozen"]
        assert r["frozen"] == "trained"


# ------------------------------------------------------------------------- in-process runs


def test_precision_change_on_resume(
    tiny_data: Path, tiny_bert: Path, tmp_path: Path, keep_torch_threads
) -> None:
    out = tmp_path / "run"
    fast = {"data.max_train_samples": 8, "data.val_splits": []}  # one step per epoch, no eval
    first = train(
        tiny_config(
            tiny_data,
            tiny_bert,
            out,
            stop_after_epochs=1,
            **fast,
            **{"optim.amp": "bf16", "optim.epochs": 3},
        )
    )
    assert len(first.losses) == 1
    assert load_train_state(out / "last")["amp"] == "bf16"
    # bf16 -> fp16: the bf16 run saved an empty scaler state; a fresh loss scale starts
    second = train(
        tiny_config(
            tiny_data,
            tiny_bert,
            out,
            stop_after_epochs=1,
            resume=str(out / "last"),
            **fast,
            **{"optim.amp": "fp16", "optim.epochs": 3},
        )
    )
    state = load_train_state(out / "last")
    assert state["amp"] == "fp16" and state["scaler"]["scale"] > 0 and state["epoch"] == 1
    assert all(np.isfinite(second.losses))
    # fp16 -> fp32
    third = train(
        tiny_config(
            tiny_data,
            tiny_bert,
            out,
            resume=str(out / "last"),
            **fast,
            **{"optim.amp": "off", "optim.epochs": 3},
        )
    )
    assert all(np.isfinite(third.losses)) and load_train_state(out / "last")["amp"] == "off"

    scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(RuntimeError, match="empty"):  # what a plain load does
        scaler.load_state_dict({})
    assert "fresh loss scale" in restore_scaler(scaler, {}, "bf16", "fp16")
    assert (
        restore_scaler(torch.amp.GradScaler("cpu", enabled=False), {"scale": 8.0}, "fp16", "bf16")
        is not None
    )


def test_test_splits_are_scored_once_with_the_best_weights(
    tiny_data: Path, tiny_bert: Path, tmp_path: Path, keep_torch_threads
) -> None:
    out = tmp_path / "run"
    result = train(tiny_config(tiny_data, tiny_bert, out, **{"data.test_splits": ["val"]}))
    best = max(result.history, key=lambda row: row["val:mIoU"])
    written = json.loads((out / TEST_METRICS_FILE).read_text())
    assert written == result.test_metrics
    # the same split, the best epoch's weights: the same numbers as that epoch's evaluation
    for k in ("mIoU", "oIoU", "prec@0.5"):
        assert written[f"val:{k}"] == pytest.approx(best[f"val:{k}"], abs=1e-12)
    assert "val:mIoU" in result.history[0] and (out / "best" / STATE_FILE).is_file()


# ------------------------------------------------------------------------------ units


def test_ema_foreach_equals_the_loop_version() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)
    )
    model.train()
    model(torch.randn(8, 5))  # running stats + num_batches_tracked (an integer buffer)
    ema = ModelEMA(model, decay=0.9997, warmup=True)
    loop = {k: v.clone() for k, v in ema.module.state_dict().items()}
    mul_add = {k: v.clone() for k, v in loop.items()}
    for t in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(8, 5))
        d = min(0.9997, (1 + t) / (10 + t))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                loop[k].lerp_(v, 1 - d)
                mul_add[k].mul_(d).add_(v, alpha=1 - d)
            else:
                loop[k].copy_(v)
                mul_add[k].copy_(v)
        ema.update(model)
    for k, v in ema.module.state_dict().items():
        assert torch.equal(v, loop[k]), k  # bit for bit the per-tensor loop
        torch.testing.assert_close(v, mul_add[k], rtol=1e-6, atol=1e-7)
    assert ema.module.state_dict()["1.num_batches_tracked"].item() == 6


def test_auto_amp_needs_native_bf16(monkeypatch) -> None:
    calls = []

    def fake(including_emulation: bool = True) -> bool:
        calls.append(including_emulation)
        return including_emulation  # a V100/T4: bf16 only emulated

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", fake)
    cuda = torch.device("cuda", 0)
    assert resolve_amp("auto", cuda) == torch.float16 and calls == [False]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_amp("auto", cuda) == torch.bfloat16
    assert resolve_amp("auto", torch.device("cpu")) is None
    assert resolve_amp("off", cuda) is None and resolve_amp("bf16", cuda) == torch.bfloat16


def test_rng_state_is_this_device_only(monkeypatch) -> None:
    """A rank saves and restores the generator of its own device, so a resume on another
    layout (rank r on another local device) works; the old all-device list did not."""
    seen: list[tuple[str, object]] = []

    def get_state(device="cuda"):
        seen.append(("get", device))
        return torch.tensor([int(torch.device(device).index or 0)], dtype=torch.uint8)

    def set_state(state, device="cuda"):
        seen.append(("set", device, int(state[0])))

    monkeypatch.setattr(torch.cuda, "get_rng_state", get_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("all devices"))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: pytest.fail("all devices"))
    saved = trainer_mod.rng_state(torch.device("cuda", 5))  # rank r on a 1 x 8 node
    assert seen == [("get", torch.device("cuda", 5))] and saved["cuda"].tolist() == [5]
    trainer_mod.set_rng_state(saved, torch.device("cuda", 1))  # the same rank on a 2 x 4 node
    assert seen[-1] == ("set", torch.device("cuda", 1), 5)
    cpu = trainer_mod.rng_state(torch.device("cpu"))
    assert "cuda" not in cpu


def test_activation_checkpointing_same_gradients_fewer_saved_tensors() -> None:
    torch.manual_seed(0)
    net = build_dit(get_config("layer_wise_tiny")).eval()  # no dropout: exact comparison
    x = torch.randn(2, 3, 96, 96)
    ids = torch.randint(5, 50, (2, net.config.max_tokens))

    def grads_and_saved(ckpt: bool) -> tuple[dict[str, torch.Tensor], int]:
        net.zero_grad(set_to_none=True)
        net.visual_encoder.checkpoint_blocks = ckpt
        saved = []

        def pack(t):
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = net(x, ids, torch.ones_like(ids))
        out.low_res_logits.float().square().mean().backward()
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}, sum(
            saved
        )

    plain, saved_plain = grads_and_saved(False)
    ckpt, saved_ckpt = grads_and_saved(True)
    net.visual_encoder.checkpoint_blocks = False
    assert plain.keys() == ckpt.keys()
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-5, atol=1e-7)
    assert saved_ckpt < 0.6 * saved_plain, (saved_ckpt, saved_plain)


def test_unused_parameters_are_the_sam_heads() -> None:
    net = build_dit(get_config("layer_wise_tiny"))
    names = unused_parameters(net, torch.device("cpu"))
    assert len(names) == 21 and all(n.startswith(UNUSED_PREFIXES) for n in names)
    assert net.training  # the probe restores the mode


def _backward_ops(loss: torch.Tensor) -> set[str]:
    names, seen, stack = set(), set(), [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        stack.extend(n for n, _ in fn.next_functions)
    return names


def test_deterministic_mode_has_no_interpolation_backward() -> None:
    """PyTorch has no deterministic CUDA backward for F.interpolate; the deterministic mode
    computes the same tables and loss with matmuls, so no such node is left to raise."""
    from dit_deploy.training.determinism import bce_loss_matmul, install_matmul_position_tables
    from dit_deploy.training.trainer import bce_loss

    torch.manual_seed(0)
    net = build_dit(get_config("layer_wise_tiny")).eval()
    grid = net.config.input_size // net.config.encoder.patch_size
    x = torch.randn(2, 3, 96, 96)
    ids = torch.randint(5, 50, (2, net.config.max_tokens))
    target = (torch.rand(2, 1, 96, 96) > 0.5).float()

    def run(loss_fn):
        net.zero_grad(set_to_none=True)
        loss = loss_fn(net(x, ids, torch.ones_like(ids)).low_res_logits, target)
        ops = _backward_ops(loss)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
        return loss.detach(), grads, ops

    ref_loss, ref_grads, ref_ops = run(bce_loss)
    assert {"UpsampleBicubic2DBackward0", "UpsampleBilinear2DBackward0"} <= ref_ops
    assert any(op.startswith("UpsampleLinear1D") for op in ref_ops)
    plain = net.visual_encoder.position_tables(grid, grid)
    install_matmul_position_tables(net.visual_encoder, grid, grid)
    tables = net.visual_encoder.position_tables(grid, grid)
    torch.testing.assert_close(tables.absolute, plain.absolute, rtol=1e-5, atol=1e-6)
    for a, b in zip(tables.relative, plain.relative, strict=True):
        torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-6)
    loss, grads, ops = run(bce_loss_matmul)
    assert not any(op.startswith("Upsample") for op in ops), sorted(ops)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        torch.testing.assert_close(grads[k], ref_grads[k], rtol=1e-4, atol=1e-6)
    # the tables still train: the position parameters get gradients through the matmuls
    assert grads["visual_encoder.pos_embed"].abs().sum() > 0
    assert grads["visual_encoder.blocks.1.attn.rel_pos_h"].abs().sum() > 0


def test_deterministic_run_trains_in_strict_mode(
    tiny_data: Path, tiny_bert: Path, tmp_path: Path, keep_torch_threads
) -> None:
    fast = {"data.max_train_samples": 16, "data.val_splits": [], "optim.epochs": 1}
    try:
        a = train(tiny_config(tiny_data, tiny_bert, tmp_path / "a", deterministic=True, **fast))
        assert torch.are_deterministic_algorithms_enabled()
        b = train(tiny_config(tiny_data, tiny_bert, tmp_path / "b", deterministic=True, **fast))
    finally:
        torch.use_deterministic_algorithms(False)
    assert len(a.losses) == 2 and a.losses == b.losses
    for k, v in a.network.state_dict().items():
        assert torch.equal(v, b.network.state_dict()[k]), k
