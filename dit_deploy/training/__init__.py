"""Training DIT: ``torchrun`` DDP trainer, datasets with the authors' augmentations, schedule, EMA.

Needs the ``torch`` extra (and ``train`` for RefCOCO masks and TensorBoard). The command-line
entry point is ``training/train.py``.
"""

from .config import AugmentConfig, DataConfig, OptimConfig, TrainConfig
from .schedule import WarmupCosineScheduler, warmup_cosine_lr

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "WarmupCosineScheduler",
    "warmup_cosine_lr",
]
