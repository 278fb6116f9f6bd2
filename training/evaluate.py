"""Score a saved model (our format, or a bundled name) on a dataset split: mIoU, oIoU, Prec@X.

    python training/evaluate.py --model dit-tiny-synthetic --data data/synthetic --split val
    python training/evaluate.py --model runs/x/best --data data/refcoco --dataset refcoco \
        --split testA --text-blind "the one"

Uses the evaluation path of training (letterbox -> network -> postprocess_batch at the
original resolution -> RISMetrics), in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source checkout


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from dit_deploy.data import open_dataset
    from dit_deploy.model.dit_model import DITModel
    from dit_deploy.training.dataset import ReferTorchDataset
    from dit_deploy.training.distributed import DistInfo
    from dit_deploy.training.trainer import evaluate

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory or bundled name")
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--dataset", default=None)
    p.add_argument("--split", default="val")
    p.add_argument("--text-blind", default=None, metavar="TEXT",
                   help="replace every expression by TEXT")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = DITModel.from_pretrained(args.model)
    cfg = model.config
    ds = ReferTorchDataset(
        open_dataset(args.data, args.split, args.dataset), model.tokenizer, cfg.input_size,
        train=False, mean=cfg.pixel_mean, std=cfg.pixel_std, constant_text=args.text_blind,
    )
    info = DistInfo(0, 0, 1, 1, torch.device("cpu"))
    metrics = evaluate(model.network, ds, info, args.batch_size, cfg.mask_threshold)
    print(json.dumps({"model": str(args.model), "split": args.split, **metrics}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
