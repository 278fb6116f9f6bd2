"""Process-group workers for tests/test_training_dist.py (a light module: spawned children
import it, not the test module)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dit_deploy.errors import CheckpointError
from dit_deploy.model import build_dit, get_config
from dit_deploy.training.trainer import load_train_state, unused_parameters


def collectives_worker(rank: int, port: int, out: str, missing: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from dit_deploy.training.distributed import DistInfo, broadcast_state
    from dit_deploy.training.trainer import bce_loss, load_on_main

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    info = DistInfo(rank, rank, 2, 2, torch.device("cpu"))
    record: dict[str, object] = {}
    state = None
    if rank == 0:
        state = {
            "model": {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(7)},
            "rng": [
                {"torch": torch.arange(4, dtype=torch.uint8), "pos": 3},
                {"h": torch.ones(2).half()},
            ],
            "epoch": 4,
            "note": "x",
            "pair": (torch.zeros(1, dtype=torch.bfloat16), 1.5),
        }
    got = broadcast_state(info, state)
    record["state"] = got
    try:
        load_on_main(info, lambda: load_train_state(missing))
    except CheckpointError as exc:
        record["error"] = str(exc)

    # DDP without find_unused_parameters: fails with the unused SAM tensors trainable, and
    # trains once they are frozen
    def steps(net, n=2):
        ddp = DistributedDataParallel(net, find_unused_parameters=False)
        x = torch.zeros(2, 3, 96, 96)
        ids = torch.ones(2, net.config.max_tokens, dtype=torch.long)
        for _ in range(n):
            out = ddp(x, ids, torch.ones_like(ids))
            bce_loss(out.low_res_logits, torch.zeros(2, 1, 96, 96)).backward()

    torch.manual_seed(0)
    net = build_dit(get_config("layer_wise_tiny"))
    try:
        steps(net)
        record["unfrozen"] = "trained"
    except RuntimeError as exc:
        record["unfrozen"] = str(exc)[:200]
    torch.manual_seed(0)
    net = build_dit(get_config("layer_wise_tiny"))
    for name, p in net.named_parameters():
        if name in unused_parameters(net, torch.device("cpu")):
            p.requires_grad_(False)
    steps(net)
    record["frozen"] = "trained"
    torch.save(record, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()
    # the DDP whose reduction failed above can leave a joinable C++ thread that aborts the
    # process at interpreter teardown ("terminate called without an active exception", 1 CI
    # run in about 10): the record is written, so leave without the C++ static destructors
    os._exit(0)
