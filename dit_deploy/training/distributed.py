"""torch.distributed set-up from torchrun's environment (one process when it is absent).

``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT`` (for many nodes too, through its rendezvous); the process
group uses NCCL on GPUs and gloo on CPUs. Nothing here assumes a filesystem shared by the
nodes: what rank 0 reads, it sends (:func:`broadcast_state`).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import CheckpointError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device
    #: a gloo group with a long timeout for waiting on rank 0's checkpoint writes (None alone)
    save_group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(
    device: str = "auto", timeout_min: float = 30.0, save_timeout_min: float = 120.0
) -> DistInfo:
    """Join the process group described by the environment (no-op for one process).

    ``timeout_min`` bounds every collective (NCCL's watchdog); the barrier after a
    checkpoint save runs on a separate gloo group bounded by ``save_timeout_min``, so a slow
    disk on rank 0 does not trip the NCCL timeout of the ranks waiting for it.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    save_group = None
    if world > 1:
        if not dist.is_initialized():
            kwargs: dict[str, Any] = {
                "backend": "nccl" if use_cuda else "gloo",
                "timeout": datetime.timedelta(minutes=timeout_min),
            }
            if use_cuda:
                kwargs["device_id"] = dev
            dist.init_process_group(**kwargs)
        save_group = dist.new_group(
            backend="gloo", timeout=datetime.timedelta(minutes=save_timeout_min)
        )
    return DistInfo(rank, local_rank, world, local_world, dev, save_group)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def wait_for_main(info: DistInfo) -> None:
    """Every rank waits here until rank 0 arrives (after writing a checkpoint)."""
    if info.distributed:
        dist.barrier(group=info.save_group)


def all_gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` for one process."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(info: DistInfo, obj: Any) -> Any:
    """Rank 0's ``obj`` (small, picklable) on every rank."""
    if not info.distributed:
        return obj
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_state(info: DistInfo, state: Any) -> Any:
    """Rank 0's nested ``state`` (dicts, lists, tensors, plain values) on every rank.

    Only rank 0 needs ``state`` (others pass None): the skeleton, with each tensor's shape and
    dtype, goes as one small object; the tensors go one broadcast each through the process
    group's device (NCCL: GPU memory, one tensor at a time), and land on the CPU like a
    ``torch.load(map_location="cpu")``. If rank 0 passes a :class:`CheckpointError` instead,
    every rank raises it.
    """
    if not info.distributed:
        if isinstance(state, CheckpointError):
            raise state
        return state
    tensors: list[torch.Tensor] = []
    skeleton = _strip(state, tensors) if info.is_main else None
    skeleton = broadcast_object(info, skeleton)
    if isinstance(skeleton, CheckpointError):
        raise skeleton
    comm = info.device if dist.get_backend() == "nccl" else torch.device("cpu")
    received: list[torch.Tensor] = []
    metas = _metas(skeleton)
    for i, (shape, dtype) in enumerate(metas):
        if info.is_main:
            buf = tensors[i].to(comm).contiguous()
        else:
            buf = torch.empty(shape, dtype=dtype, device=comm)
        dist.broadcast(buf, src=0)
        received.append(tensors[i] if info.is_main else buf.cpu())
    return _fill(skeleton, iter(received))


class _TensorSlot:
    """A tensor's place in a broadcast skeleton."""

    def __init__(self, index: int, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.index, self.shape, self.dtype = index, shape, dtype


def _strip(obj: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors.append(obj)
        return _TensorSlot(len(tensors) - 1, tuple(obj.shape), obj.dtype)
    if isinstance(obj, dict):
        return {k: _strip(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_strip(v, tensors) for v in obj)
    return obj


def _metas(obj: Any) -> list[tuple[tuple[int, ...], torch.dtype]]:
    out: list[tuple[int, tuple[int, ...], torch.dtype]] = []

    def walk(o: Any) -> None:
        if isinstance(o, _TensorSlot):
            out.append((o.index, o.shape, o.dtype))
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    walk(obj)
    return [(shape, dtype) for _, shape, dtype in sorted(out, key=lambda t: t[0])]


def _fill(obj: Any, tensors: Any) -> Any:
    if isinstance(obj, _TensorSlot):
        return next(tensors)
    if isinstance(obj, dict):
        return {k: _fill(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_fill(v, tensors) for v in obj)
    return obj
