"""Training DIT: ``torchrun`` DDP trainer, datasets with the authors' augmentations, schedule,
EMA, and the evaluation of models and exports.

Needs the ``torch`` extra (and ``train`` for RefCOCO masks and TensorBoard). The command-line
entry points are ``training/train.py`` and ``training/evaluate.py`` (:mod:`.cli`, whose
:func:`~dit_deploy.training.cli.register` adds the ``train`` and ``evaluate`` verbs).
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
