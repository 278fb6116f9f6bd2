"""Start a multi-process (gloo/NCCL) training from Python, without torchrun.

``torchrun`` is the way to launch on clusters; this helper is for tests and notebooks::

    spawn(cfg, nprocs=2, result_dir=tmp)   # writes tmp/rank{r}.pt: losses, history, weights

``env`` and ``overrides`` give single ranks other environment variables or config keys, e.g.
two "nodes" of one process each (``LOCAL_RANK=0``, ``LOCAL_WORLD_SIZE=1`` on both) whose
``resume`` paths differ (no shared directory).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from .config import TrainConfig


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(
    rank: int,
    world: int,
    port: int,
    cfg: dict[str, Any],
    result_dir: str,
    env: dict[int, dict[str, str]],
    overrides: dict[int, dict[str, Any]],
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
    )
    os.environ.update(env.get(rank, {}))
    from .trainer import main_worker

    config = TrainConfig.from_dict(cfg)
    if overrides.get(rank):
        config = config.override(overrides[rank])
    result = main_worker(config)
    torch.save(
        {
            "losses": result.losses,
            "history": result.history,
            "state": {k: v.detach().cpu() for k, v in result.network.state_dict().items()},
            "unused": result.unused_parameters,
            "test_metrics": result.test_metrics,
        },
        Path(result_dir) / f"rank{rank}.pt",
    )


def spawn(
    cfg: TrainConfig,
    nprocs: int,
    result_dir: str | Path,
    env: dict[int, dict[str, str]] | None = None,
    overrides: dict[int, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Train with ``nprocs`` local processes; return each rank's ``{losses, history, state,
    unused, test_metrics}``. ``env[r]`` / ``overrides[r]``: rank r's extra environment / config
    overrides."""
    result_dir = Path(result_dir)
    result_dir.mkdir(parents=True, exist_ok=True)
    mp.spawn(
        _worker,
        args=(nprocs, free_port(), cfg.to_dict(), str(result_dir), env or {}, overrides or {}),
        nprocs=nprocs,
        join=True,
    )
    return [
        torch.load(result_dir / f"rank{r}.pt", map_location="cpu", weights_only=True)
        for r in range(nprocs)
    ]
