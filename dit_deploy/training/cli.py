"""Command lines of training: ``train`` and ``evaluate`` (``training/train.py``,
``training/evaluate.py``, and the ``dit-deploy`` verbs through :func:`register`).

Typed errors (:class:`DITError`) print one line and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from ..cli_types import HelpFormatter, non_negative_int, positive_int
from ..runtime.manifest import LAYOUT_ROLES

TRAIN_EXAMPLES = """examples:
  # the authors' recipe: 4 GPUs x 16 = batch 64, fp32, 40 epochs
  torchrun --nproc-per-node 4 training/train.py \\
      --config training/configs/layer_wise_vit_b_refcoco.yaml \\
      --sam-checkpoint sam_vit_b_01ec64.pth --text-encoder bert-base-uncased/ \\
      --data data/refcoco
  # the same with bf16 autocast (a named deviation from the recipe)
  torchrun --nproc-per-node 4 training/train.py --config ... --set optim.amp=bf16
  # two nodes; resume needs last/ on the first node only (rank 0 reads and broadcasts it)
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
      --rdzv-id JOB training/train.py --config ... --resume runs/x/last
  # CPU smoke run with offline synthetic data (gloo)
  torchrun --nproc-per-node 2 training/train.py --config training/configs/tiny_synthetic.yaml
  python training/train.py --config training/configs/tiny_synthetic.yaml \\
      --set optim.epochs=2 --set optim.lr=5e-4
"""

EVAL_EXAMPLES = """examples:
  dit-deploy evaluate --model dit-tiny-synthetic --data runs/dit-deploy/data --split val
  dit-deploy evaluate --model runs/x/best --data data/refcoco --dataset refcoco \\
      --split val+testA --device cuda --batch-size 64 --precision bf16
  # an export through the torch-free runtime (same metrics code)
  dit-deploy evaluate --model runs/dit-deploy/export --backend onnxruntime \\
      --data runs/dit-deploy/data
  dit-deploy evaluate --model exports/x --backend tensorrt --precision fp16 \\
      --data data/refcoco --dataset refcoco --split testB
"""


# ---------------------------------------------------------------------------------- train


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``train``; those that override the config default to the config."""
    s = argparse.SUPPRESS
    p.add_argument("--config", required=True, default=s, type=Path, help="training YAML")
    p.add_argument("--data", default=s, help="dataset root (data.path)")
    p.add_argument("--dataset", default=s, help="dataset name when the root holds several")
    p.add_argument("--text-encoder", default=s, help="Hugging Face BERT dir (weights + vocab)")
    p.add_argument("--sam-checkpoint", default=s, help="SAM checkpoint to initialise from")
    p.add_argument("--init-from", default=s, help="dit-deploy model directory to fine-tune")
    p.add_argument("--output", default=s, help="output directory (output_dir)")
    p.add_argument("--resume", default=s, help="checkpoint directory to resume (<output>/last)")
    p.add_argument("--epochs", type=positive_int, default=s, help="optim.epochs")
    p.add_argument(
        "--text-blind",
        metavar="TEXT",
        nargs="?",
        const="the one",
        default=s,
        help="replace every expression by TEXT (baseline; 'the one' when no TEXT)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key (YAML value, coerced to the key's type), "
        "e.g. --set optim.lr=5e-4",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="check the config, text encoder and data in this one process, then stop: run "
        "it before torchrun, whose own report of a failed rank is many lines",
    )


_TRAIN_FLAGS = (
    ("data.path", "data"),
    ("data.dataset", "dataset"),
    ("text_encoder", "text_encoder"),
    ("sam_checkpoint", "sam_checkpoint"),
    ("init_from", "init_from"),
    ("output_dir", "output"),
    ("resume", "resume"),
    ("optim.epochs", "epochs"),
    ("data.constant_text", "text_blind"),
)


def train_config_from_args(args: argparse.Namespace):
    """The :class:`TrainConfig` of parsed ``train`` options (raises ConfigError)."""
    import yaml

    from ..errors import ConfigError
    from .config import TrainConfig

    cfg = TrainConfig.from_yaml(args.config)
    over: dict[str, Any] = {}
    for key, attr in _TRAIN_FLAGS:
        if hasattr(args, attr):
            over[key] = getattr(args, attr)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set needs KEY=VALUE, got {item!r}")
        try:
            over[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            over[key] = value
    return cfg.override(over) if over else cfg


def run_train(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .trainer import main_worker

    cfg = train_config_from_args(args)
    if args.check:
        from .trainer import preflight

        print(f"train: check: {preflight(cfg)}", flush=True)
        return 0
    main_worker(cfg)
    if os.environ.get("RANK", "0") == "0":  # one line, from rank 0 under torchrun
        out = Path(cfg.output_dir)
        written = [n for n in ("best", "last", "metrics.csv", "steps.csv", "tensorboard")
                   if (out / n).exists()]  # fmt: skip
        print(f"train: done: {out}/ holds {', '.join(written)} (checkpoints best/ and last/, "
              "per-epoch metrics.csv, per-step steps.csv)", flush=True)  # fmt: skip
    return 0


# ------------------------------------------------------------------------------- evaluate


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    from .evaluation import backends

    p.add_argument(
        "--model",
        required=True,
        help="model directory or bundled name (PyTorch), or an export directory (runtime)",
    )
    p.add_argument("--data", required=True, help="dataset root")
    p.add_argument("--dataset", default=None, help="dataset name when the root holds several")
    p.add_argument("--split", default="val", help="split, or several joined by + (val+testA)")
    p.add_argument(
        "--backend",
        default="auto",
        choices=backends(),
        help="auto: torch for a model directory, onnxruntime for an export; or a runtime "
        "backend for an export",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="torch: auto|cpu|cuda|cuda:N; runtime: cpu|cuda (auto: cuda when available)",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        help="torch: fp32|tf32|bf16|fp16 (autocast); runtime: the export's graph precision "
        "(fp32|fp16|int8|...)",
    )
    p.add_argument(
        "--layout",
        default=None,
        choices=tuple(LAYOUT_ROLES),
        help="runtime: the graphs (default: fused if exported, else split)",
    )
    p.add_argument("--batch-size", type=positive_int, default=32, help="pairs per forward")
    p.add_argument(
        "--workers", type=non_negative_int, default=2, help="torch: data-loading processes"
    )
    p.add_argument(
        "--threads", type=positive_int, default=None, help="CPU threads (default: library's)"
    )
    p.add_argument(
        "--max-samples", type=positive_int, default=None, help="first N expressions only"
    )
    p.add_argument("--text-blind", default=None, metavar="TEXT", help="replace every expression")
    p.add_argument("--json", action="store_true", help="print one JSON object, not a table")


def run_evaluate(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .evaluation import EvalOptions, evaluate_model, format_table

    opts = EvalOptions(
        model=args.model,
        data=args.data,
        dataset=args.dataset,
        split=args.split,
        backend=args.backend,
        device=args.device,
        precision=args.precision,
        layout=args.layout,
        batch_size=args.batch_size,
        workers=args.workers,
        threads=args.threads,
        max_samples=args.max_samples,
        text_blind=args.text_blind,
        progress=not args.json,
    )
    report = evaluate_model(opts)
    print(json.dumps(report) if args.json else format_table(report), flush=True)
    return 0


# ------------------------------------------------------------------------ the entry points


def register(subparsers: Any) -> None:
    """Add the ``train`` and ``evaluate`` verbs to a ``dit-deploy`` command line."""
    p = subparsers.add_parser(
        "train",
        help="train DIT (torchrun DDP)",
        description="Train DIT: one process, or one per device under torchrun "
        "(NCCL on GPUs, gloo on CPUs).",
        epilog=TRAIN_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    add_train_arguments(p)
    p.set_defaults(handler=run_train)
    p = subparsers.add_parser(
        "evaluate",
        help="mIoU/oIoU/Prec@X of a model or an export on a dataset split",
        description="Score a model (PyTorch) or an export (runtime backends) on a split.",
        epilog=EVAL_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    add_evaluate_arguments(p)
    p.set_defaults(handler=run_evaluate)
