"""``dit-bench``: one command that measures speed, accuracy and parity for every backend and
precision available on this machine, and keeps going when one of them fails."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, ConfigError
from .cells import plan_cells
from .report import environment, print_table, write_reports
from .stats import NOISE_LIMIT

DEFAULT_MODEL = "dit-tiny-synthetic"
RUNS = Path("runs") / "dit-bench"
EPILOG = """examples:
  dit-bench                                             # bundled model + bundled evaluation set
  dit-bench exports/refcoco_vit_b --all --data data/refcoco --split val --batch 1,4,8
  dit-bench exports/refcoco_vit_b --engine fp16         # the TensorRT FP16 engine (GPU machine)
  dit-bench --server http://127.0.0.1:8000 --concurrency 1,4,16 --duration 20   # a DIT server
"""


DESCRIPTION = (
    "Benchmark an export directory across backends x precisions: latency (warm-up, time "
    "budget, p50/p90/p99, batch sweep, per-stage split, cold start, peak memory), accuracy "
    "(mIoU/oIoU/Prec@X on a dataset split) and parity against the PyTorch FP32 reference on "
    "the same pairs. Cells that cannot run here are listed with the reason. Each cell runs in "
    "its own process; all cells are timed in interleaved rounds, speed-ups are per-round "
    "ratios with their spread, wide spreads are flagged noisy, and the machine's load at the "
    "start is recorded. 'dit-bench' is the same command."
)


def register(subparsers) -> None:
    """``dit-deploy bench`` (also installed as ``dit-bench``)."""
    p = subparsers.add_parser(
        "bench",
        help="speed, accuracy and parity of every backend x precision (= dit-bench)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(handler=bench_from_args)


def equivalent_command(args: argparse.Namespace) -> str:
    """The ``dit-bench`` command line that repeats this run (what the report records), from
    the options themselves: the same for ``dit-bench``, ``dit-deploy bench`` and the main
    job, which calls the library."""
    import shlex

    p = argparse.ArgumentParser()
    add_arguments(p)
    parts = ["dit-bench"]
    for action in p._actions:
        if action.dest in ("help",) or not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        if value is None or value == action.default or value is False:
            continue
        if not action.option_strings:
            parts.append(shlex.quote(str(value)))
        elif value is True:
            parts.append(action.option_strings[-1])
        else:
            parts += [action.option_strings[-1], shlex.quote(str(value))]
    return " ".join(parts)


def options(**overrides: Any) -> argparse.Namespace:
    """The bench options with their defaults, overridden by keyword (for library callers)."""
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args([])
    unknown = set(overrides) - set(vars(args))
    if unknown:
        raise TypeError(f"unknown bench options: {sorted(unknown)}")
    vars(args).update(overrides)
    return args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "export_dir",
        nargs="?",
        type=Path,
        help=f"export directory (default: the bundled {DEFAULT_MODEL}, exported on first use)",
    )
    p.add_argument("--all", action="store_true", help="every backend x precision x layout")
    p.add_argument(
        "--engine",
        choices=["fp32", "fp16", "int8"],
        help="only the TensorRT engine of this precision",
    )
    p.add_argument(
        "--data",
        type=Path,
        help="dataset (refer layout or the authors' preprocessed layout); "
        "default: the bundled synthetic evaluation set",
    )
    p.add_argument("--split", default="val", help="dataset split (default: %(default)s)")
    p.add_argument(
        "--limit", type=int, default=100, help="evaluate the first N pairs (default: %(default)s)"
    )
    p.add_argument(
        "--batch", default="1,4", help="comma-separated batch sizes (default: %(default)s)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads per cell (default: all cores)"
    )
    p.add_argument(
        "--budget",
        type=float,
        default=5.0,
        help="seconds of timed runs per batch size (%(default)s)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="interleaved rounds: every cell runs a slice of its budget in each round, so "
        "drift hits all cells alike; speed-ups are computed round by round. All cells stay "
        "loaded meanwhile: memory is the sum of their peaks (%(default)s)",
    )
    p.add_argument(
        "--noise-limit",
        type=float,
        default=NOISE_LIMIT,
        help="flag a cell noisy when its round-to-round spread (IQR/median) of latency or "
        "speed-up exceeds this (%(default)s)",
    )
    p.add_argument("--pretrained", help="PyTorch reference: our model directory or bundled name")
    p.add_argument(
        "--checkpoint", type=Path, help="PyTorch reference: an authors'-format checkpoint"
    )
    p.add_argument("--config", default="layer_wise_vit_b", help="with --checkpoint (%(default)s)")
    p.add_argument("--text-encoder", type=Path, help="with --checkpoint: BERT directory")
    p.add_argument(
        "--vocab", type=Path, help="with --checkpoint: vocab.txt if not in --text-encoder"
    )
    p.add_argument(
        "--report-dir", type=Path, help=f"where to write reports (default: {RUNS}/<model>)"
    )
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    s = p.add_argument_group("server load test (dit_deploy.bench.server_load)")
    s.add_argument("--server", metavar="URL", help="load-test a DIT Triton server at this URL")
    s.add_argument(
        "--concurrency",
        default="1,4,16",
        help="requests in flight per level (default: %(default)s)",
    )
    s.add_argument(
        "--duration", type=float, default=20.0, help="seconds per level (default: %(default)s)"
    )
    s.add_argument("--metrics-url", help="Triton's metrics (default: http://HOST:8002/metrics)")
    s.add_argument("--compare", type=Path, metavar="EXPORT_DIR", help="also run in-process")


def _server_main(args: argparse.Namespace) -> int:
    from . import server_load

    try:
        levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(
            f"--concurrency takes integers like 1,4,16; got {args.concurrency!r}"
        ) from None
    opts = server_load.LoadOptions(
        url=args.server,
        concurrency=levels,
        duration_s=args.duration,
        metrics_url=args.metrics_url,
        compare_export=args.compare,
        threads=args.threads,
    )
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    report = server_load.run_load(opts, log)
    files = server_load.write_reports(report, args.report_dir or RUNS / "server")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        server_load.print_table(report)
        print(f"reports: {', '.join(str(f) for f in files)}")
    return 0


def _bundled_data(input_size: int, limit: int, log) -> Path:
    from ..data.synthetic import generate

    out = RUNS / "data" / f"synthetic-val-{limit}-{input_size}"
    if not (out / "synthetic" / "instances.json").is_file():
        log(f"generating the bundled evaluation set ({limit} scenes) in {out} ...")
        generate(out, n_train=0, n_val=limit, seed=2024, size=input_size, overwrite=True)
    return out


def _torch_source(
    args: argparse.Namespace, manifest_source: dict[str, Any]
) -> dict[str, Any] | None:
    if args.pretrained:
        return {"pretrained": args.pretrained}
    if args.checkpoint:
        return {
            "checkpoint": str(args.checkpoint),
            "config": args.config,
            "text_encoder": str(args.text_encoder) if args.text_encoder else None,
            "vocab": str(args.vocab) if args.vocab else None,
        }
    if "pretrained" in manifest_source:
        return {"pretrained": manifest_source["pretrained"]}
    return None


def _batches(text: str) -> list[int]:
    try:
        batches = sorted({int(b) for b in text.split(",") if b.strip()})
    except ValueError:
        batches = []
    if not batches or batches[0] < 1:
        raise ConfigError(f"--batch {text!r}: give comma-separated positive integers, e.g. 1,4")
    return batches


def run_bench(args: argparse.Namespace, log=print) -> dict[str, Any]:
    from ..data import open_dataset
    from ..metrics import logits_agreement
    from ..runtime.manifest import read_manifest

    batches = _batches(args.batch)
    if args.engine:  # feasibility before any export or data generation
        from ..runtime.devices import gpu_unavailable_reason

        reason = gpu_unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(
                f"--engine {args.engine} runs a TensorRT engine, which needs an NVIDIA GPU "
                f"({reason}); run it on a GPU machine, or drop --engine for the CPU cells"
            )
    if args.export_dir is None:
        from ..exporters.onnx_export import export_pretrained

        name = args.pretrained or DEFAULT_MODEL
        export_dir = RUNS / "exports" / name
        export_pretrained(name, export_dir, log)
    else:
        export_dir = args.export_dir
    manifest = read_manifest(export_dir)
    data = args.data or _bundled_data(manifest.input_size, args.limit, log)
    dataset = open_dataset(data, args.split)  # one clear DatasetError if it is not a dataset
    cells = plan_cells(
        export_dir,
        torch_source=_torch_source(args, manifest.source),
        all_cells=args.all,
        engine=args.engine,
    )
    request = {
        "export_dir": str(export_dir),
        "model": _torch_source(args, manifest.source),
        "data": {"path": str(data), "split": args.split, "limit": args.limit},
        "batches": batches,
        "threads": args.threads,
        "budget_s": args.budget,
    }
    from ..progress import Progress
    from .machine import machine_load
    from .matrix import run_matrix

    load = machine_load()
    with tempfile.TemporaryDirectory() as tmp, Progress("bench", 0) as progress:
        results, baseline = run_matrix(
            cells,
            request,
            Path(tmp),
            args.rounds,
            args.noise_limit,
            progress.describe,
        )
        for cell in results:
            if "logits_file" in cell:
                cell["logits"] = np.load(cell.pop("logits_file"))
    reference = next(
        (c.get("logits") for c in results if c["backend"] == "pytorch" and "logits" in c), None
    )
    for cell in results:
        logits = cell.pop("logits", None)
        if reference is not None and logits is not None:
            cell["parity"] = {
                "max_abs": float(np.abs(logits - reference).max()),
                "mean_abs": float(np.abs(logits - reference).mean()),
                "mask_agreement": logits_agreement(logits, reference, manifest.mask_threshold),
            }
    return {
        "model": manifest.config_name,
        "export_dir": str(export_dir),
        "command": equivalent_command(args),
        "data": {
            "name": f"{data} ({args.split})",
            "path": str(data),
            "pairs": min(len(dataset), args.limit),
        },
        "batches": batches,
        "environment": environment(args.threads) | {"load_at_start": load},
        "rounds": args.rounds,
        "noise_limit": args.noise_limit,
        "baseline": baseline,
        "cells": results,
    }


def _check_writable_dir(path: Path) -> None:
    """Refuse a directory path that could not be created or written, without creating it."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ConfigError(
            f"--report-dir {path}: {existing} is not a writable directory; choose another path"
        )


def bench_from_args(args: argparse.Namespace) -> int:
    """Run the benchmark, write the reports, print the table (or JSON); 1 if a cell failed."""
    if args.report_dir is not None:
        _check_writable_dir(args.report_dir)  # an unusable path fails before the work
    if args.server:
        return _server_main(args)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    report = run_bench(args, log)
    out_dir = args.report_dir or RUNS / report["model"]
    files = write_reports(report, out_dir, log)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
        print(f"reports: {', '.join(str(f) for f in files)}")
    statuses = [c["result"]["status"] for c in report["cells"]]
    if "failed" in statuses:
        return 1
    if args.engine and statuses != ["ok"]:
        print(f"error: {report['cells'][0]['result'].get('reason')}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``dit-bench``: the same as ``dit-deploy bench``."""
    from ..cli import main as front

    return front(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
