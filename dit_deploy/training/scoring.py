"""RIS metrics of a network on a dataset, sharded over the ranks of a process group.

The inference path: low-res logits -> ``postprocess_batch`` (crop, resize to the original
size, threshold) -> :class:`~dit_deploy.metrics.RISMetrics`. Used by the trainer (val and test
splits) and by ``training/evaluate.py`` for a model directory.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..metrics import RISMetrics
from ..postprocess import postprocess_batch
from ..progress import Progress
from .amp import eval_precision
from .dataset import ReferTorchDataset, collate_eval
from .distributed import DistInfo, all_gather_objects


@torch.no_grad()
def evaluate(
    network: nn.Module,
    dataset: ReferTorchDataset,
    info: DistInfo,
    batch_size: int,
    threshold: float,
    num_workers: int = 0,
    progress: bool = False,
    precision: str = "fp32",
    train_amp: torch.dtype | None = None,
) -> dict[str, float]:
    """RIS metrics of ``network`` on ``dataset`` at the ORIGINAL resolution.

    Each rank scores a strided shard; the accumulators are merged on every rank.
    ``precision``: fp32 | tf32 | bf16 | fp16 | auto (see :func:`.amp.eval_precision`).
    """
    was_training = network.training
    network.eval()
    indices = list(range(info.rank, len(dataset), info.world_size))
    dev = next(network.parameters()).device
    loader = DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_eval,
        pin_memory=dev.type == "cuda",
    )
    metrics = RISMetrics()
    show = progress and info.is_main
    with (
        eval_precision(precision, dev, train_amp),
        Progress("eval", len(loader), enabled=show) as bar,
    ):
        for batch in loader:
            out = network(
                batch["image"].to(dev, non_blocking=True),
                batch["input_ids"].to(dev, non_blocking=True),
                batch["attention_mask"].to(dev, non_blocking=True),
            )
            low_res = out.low_res_logits.float().cpu().numpy()
            for res, gt in zip(
                postprocess_batch(low_res, batch["letterbox"], threshold),
                batch["gt_mask"],
                strict=True,
            ):
                metrics.update(res.mask, gt)
            bar.update(1)
    merged = RISMetrics()
    for part in all_gather_objects(info, metrics):
        merged.merge(part)
    network.train(was_training)
    return merged.compute()
