"""The data of a training run: the train set with its augmentations, the val and test sets,
and the per-rank sampler and loader of the train set."""

from __future__ import annotations

from torch.utils.data import DataLoader, DistributedSampler

from ..data import open_dataset
from ..model.config import DITConfig
from ..tokenizer import WordPieceTokenizer
from .config import TrainConfig
from .dataset import ReferTorchDataset, collate_train
from .distributed import DistInfo


def train_dataset(
    cfg: TrainConfig, mcfg: DITConfig, tokenizer: WordPieceTokenizer
) -> ReferTorchDataset:
    """The train split, augmented (seeded by ``cfg.seed`` and the epoch)."""
    return ReferTorchDataset(
        open_dataset(cfg.data.path, cfg.data.train_split, cfg.data.dataset),
        tokenizer,
        mcfg.input_size,
        train=True,
        augment=cfg.augment,
        mean=mcfg.pixel_mean,
        std=mcfg.pixel_std,
        seed=cfg.seed,
        constant_text=cfg.data.constant_text,
        max_samples=cfg.data.max_train_samples,
        sample_unit=cfg.data.sample_unit,
    )


def eval_dataset(
    cfg: TrainConfig, mcfg: DITConfig, tokenizer: WordPieceTokenizer, split: str
) -> ReferTorchDataset:
    """A val or test split, letterboxed only (at most ``max_val_samples``)."""
    return ReferTorchDataset(
        open_dataset(cfg.data.path, split, cfg.data.dataset),
        tokenizer,
        mcfg.input_size,
        train=False,
        mean=mcfg.pixel_mean,
        std=mcfg.pixel_std,
        constant_text=cfg.data.constant_text,
        max_samples=cfg.data.max_val_samples,
    )


def train_loader(
    cfg: TrainConfig, info: DistInfo, dataset: ReferTorchDataset, per_rank: int
) -> tuple[DistributedSampler, DataLoader]:
    """This rank's shuffled shard of ``dataset`` in batches of ``per_rank`` (last dropped)."""
    sampler = DistributedSampler(
        dataset,
        num_replicas=info.world_size,
        rank=info.rank,
        shuffle=True,
        seed=cfg.seed,
        drop_last=True,
    )
    loader = DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        drop_last=True,
        num_workers=cfg.data.num_workers,
        collate_fn=collate_train,
        pin_memory=info.device.type == "cuda",
        # workers must be re-created each epoch: they hold the dataset's epoch (augmentation)
        persistent_workers=False,
    )
    return sampler, loader
