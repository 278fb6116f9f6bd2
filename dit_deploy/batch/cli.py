"""``dit-deploy batch SOURCE OUT``: segment every (image, expression) row of a dataset on Ray.

Reads rows from a JSONL/CSV file ({"id", "image", "text"}) or a dataset split
(refcoco:val, synthetic:val with --data), decodes/letterboxes/tokenizes them in CPU tasks,
runs the export in a pool of Predictor workers, and writes sharded JSONL (id, text, score,
mask as COCO compressed RLE), errors.jsonl (bad rows and why) and summary.json (rows,
errors, rows/s, and mIoU/oIoU/Prec@X when the source has ground truth). Each shard is
written atomically; re-running the same command resumes. Without --ray-address a local
Ray is started on 127.0.0.1 for the job and stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli_types import HelpFormatter, auto_or_positive_int, non_negative_float, positive_int
from ..runtime.backends import backend_names
from ..runtime.manifest import LAYOUT_ROLES

EPILOG = """examples:
  dit-deploy batch pairs.jsonl out/ --export runs/dit-deploy/export --precision int8
  dit-deploy batch synthetic:val out/ --data runs/dit-deploy/data --num-workers 2 --png
  dit-deploy batch refcoco:val out/ --data data/refcoco --export exports/vit_b \\
      --ray-address auto --num-workers 8 --gpus-per-worker 1 --batch-size 16
  dit-deploy batch pairs.jsonl out/ ...   # again, after a crash: resumes (done shards kept)

pairs.jsonl: one {"id": "a1", "image": "imgs/a.jpg", "text": "the red cup"} a line
(image paths relative to the file); pairs.csv: columns id,image,text.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="pairs .jsonl/.csv, or NAME:SPLIT of a dataset under --data")
    p.add_argument("out", type=Path, help="output directory (re-running resumes there)")
    p.add_argument(
        "--export",
        type=Path,
        default=Path("runs") / "dit-deploy" / "export",
        help="export directory (manifest.json + graphs)",
    )
    p.add_argument(
        "--data", type=Path, default=None, help="dataset root (for NAME:SPLIT sources only)"
    )
    p.add_argument(
        "--backend", choices=backend_names(), default="onnxruntime", help="runtime backend"
    )
    p.add_argument("--precision", default="fp32", help="fp32, or a precision of the export")
    p.add_argument(
        "--layout",
        choices=("auto", *LAYOUT_ROLES),
        default="auto",
        help="graph layout (auto: fused when exported, else split)",
    )
    p.add_argument(
        "--num-workers",
        type=auto_or_positive_int,
        default=None,
        help="Predictor actors, or auto (default: auto: the throughput plan measured for this "
        "export on this machine, on a local CPU run; 1 on a cluster or GPUs)",
    )
    p.add_argument(
        "--batch-size",
        type=auto_or_positive_int,
        default=None,
        help="rows per model call, or auto (default: auto: as --num-workers; 8 on a cluster "
        "or GPUs)",
    )
    p.add_argument(
        "--gpus-per-worker",
        type=non_negative_float,
        default=0.0,
        help="GPUs each worker reserves (0: CPU; fractions share a GPU)",
    )
    p.add_argument(
        "--threads",
        type=auto_or_positive_int,
        default=None,
        help="CPU threads (and Ray CPUs) of each worker, or auto (default: auto: as "
        "--num-workers; 1 on a cluster or GPUs)",
    )
    p.add_argument("--shard-size", type=positive_int, default=1000, help="rows per output shard")
    p.add_argument("--png", action="store_true", help="also write masks/<id>.png")
    p.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster (auto, HEAD:6379, ray://HEAD:10001); none: a local Ray "
        "on 127.0.0.1, started and stopped for the job",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="discard results of an earlier job in OUT"
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no Ray Data progress bars (they are off anyway when stderr is not a terminal)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")


def register(subparsers) -> None:
    """``dit-deploy batch``."""
    p = subparsers.add_parser(
        "batch",
        help="segment a whole dataset on Ray Data (local or a cluster), resumable",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(handler=run_from_args)


def options_from_args(args: argparse.Namespace):
    """The :class:`~dit_deploy.batch.BatchOptions` of parsed arguments."""
    from .pipeline import BatchOptions

    return BatchOptions(
        source=args.source,
        out=args.out,
        export=args.export,
        data=args.data,
        backend=args.backend,
        precision=args.precision,
        layout=None if args.layout == "auto" else args.layout,
        num_workers=args.num_workers,
        batch_size=args.batch_size,
        gpus_per_worker=args.gpus_per_worker,
        threads=args.threads,
        shard_size=args.shard_size,
        png=args.png,
        ray_address=args.ray_address,
        overwrite=args.overwrite,
        progress=False if args.no_progress else None,
    )


def format_summary(summary: dict) -> str:
    """A readable table of a job's summary."""
    lines = [
        f"{'rows':<16}{summary['rows']}",
        f"{'segmented':<16}{summary['ok']}",
        f"{'errors':<16}{summary['errors']}",
        f"{'shards':<16}{summary['shards']} ({summary['shards_resumed']} from an earlier run)",
        f"{'workers':<16}{summary['workers']} x batch {summary['batch_size']}, "
        f"{summary['backend']} {summary['precision']} {summary['layout']}",
        f"{'wall':<16}{summary['wall_s']:.1f} s (Ray start {summary['startup_s']:.1f} s)",
    ]
    if summary.get("rows_per_s"):
        lines.append(
            f"{'rows/s':<16}{summary['rows_per_s']:.1f} (rows / pipeline time: from the first "
            f"row submitted to the last result, Ray's start excluded; first result after "
            f"{summary['first_result_s']:.1f} s)"
        )
    metrics = summary.get("metrics")
    if metrics:
        names = [k for k in metrics if k != "count"]
        lines.append("  ".join(f"{k:>8}" for k in names) + f"  {'count':>6}")
        lines.append(
            "  ".join(f"{100 * metrics[k]:8.2f}" for k in names) + f"  {metrics['count']:>6}"
        )
    return "\n".join(lines)


def run_from_args(args: argparse.Namespace) -> int:
    from .pipeline import run_batch

    options = options_from_args(args)

    def log(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    summary = run_batch(options, log=log)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    if summary["rows"] and not summary["ok"]:
        print(
            f"dit-deploy batch: every row failed; see {Path(summary['out']) / 'errors.jsonl'}",
            file=sys.stderr,
        )
        return 1
    return 0
