"""Train DIT. One process, or one per device under torchrun (DDP: NCCL on GPUs, gloo on CPUs).

    torchrun --nproc-per-node 4 training/train.py \
        --config training/configs/layer_wise_vit_b_refcoco.yaml \
        --sam-checkpoint sam_vit_b_01ec64.pth --text-encoder bert-base-uncased/ --data data/refcoco
    torchrun --nproc-per-node 2 training/train.py --config training/configs/tiny_synthetic.yaml
    python training/train.py --config training/configs/tiny_synthetic.yaml --set optim.epochs=2
    # many nodes: torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \
    #     --rdzv-endpoint HOST:29500 --rdzv-id JOB training/train.py --config ...

Resume with ``--resume <output_dir>/last``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source checkout

from dit_deploy.training.config import TrainConfig  # noqa: E402
from dit_deploy.training.trainer import main_worker  # noqa: E402


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, type=Path, help="training YAML")
    p.add_argument("--data", help="dataset root (data.path)")
    p.add_argument("--dataset", help="dataset name when the root holds several (data.dataset)")
    p.add_argument("--text-encoder", help="Hugging Face BERT directory (weights + vocab.txt)")
    p.add_argument("--sam-checkpoint", help="SAM checkpoint to initialise from")
    p.add_argument("--init-from", help="dit-deploy model directory to fine-tune")
    p.add_argument("--output", help="output directory")
    p.add_argument("--resume", help="checkpoint directory to resume (<output>/last)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--text-blind", metavar="TEXT", nargs="?", const="the one",
                   help="replace every expression by TEXT (baseline; default 'the one')")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.lr=5e-4 (YAML value)")
    args = p.parse_args(argv)
    cfg = TrainConfig.from_yaml(args.config)
    over = {}
    for key, attr in (("data.path", "data"), ("data.dataset", "dataset"),
                      ("text_encoder", "text_encoder"), ("sam_checkpoint", "sam_checkpoint"),
                      ("init_from", "init_from"), ("output_dir", "output"),
                      ("resume", "resume"), ("optim.epochs", "epochs"),
                      ("data.constant_text", "text_blind")):
        if getattr(args, attr) is not None:
            over[key] = getattr(args, attr)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set needs KEY=VALUE, got {item!r}")
        over[key] = yaml.safe_load(value)
    return cfg.override(over) if over else cfg


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main_worker(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
