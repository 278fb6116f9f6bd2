"""``dit-bench``: one command that measures speed, accuracy and parity for every backend and
precision available on this machine, and keeps going when one of them fails."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import fields
from pathlib import Path

from ..cli_types import non_negative_float, positive_float, positive_int, positive_int_list
from ..errors import ConfigError
from .report import print_table, write_reports
from .run import DEFAULT_MODEL, RUNS, BenchOptions, run_bench

DEFAULTS = BenchOptions()  # the parser's defaults are the library's

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


def bench_options(args: argparse.Namespace) -> BenchOptions:
    """The command line as the library's options."""
    return BenchOptions(**{f.name: getattr(args, f.name) for f in fields(BenchOptions)})


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
    p.add_argument("--split", default=DEFAULTS.split, help="dataset split (default: %(default)s)")
    p.add_argument(
        "--limit",
        type=positive_int,
        default=DEFAULTS.limit,
        help="evaluate the first N pairs (default: %(default)s)",
    )
    p.add_argument(
        "--batch",
        type=positive_int_list,
        default=DEFAULTS.batch,
        help="comma-separated batch sizes (default: %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads per cell (default: all cores)",
    )
    p.add_argument(
        "--budget",
        type=positive_float,
        default=DEFAULTS.budget,
        help="seconds of timed runs per batch size (%(default)s)",
    )
    p.add_argument(
        "--rounds",
        type=positive_int,
        default=DEFAULTS.rounds,
        help="interleaved rounds: every cell runs a slice of its budget in each round, so "
        "drift hits all cells alike; speed-ups are computed round by round. All cells stay "
        "loaded meanwhile: memory is the sum of their peaks (%(default)s)",
    )
    p.add_argument(
        "--noise-limit",
        type=non_negative_float,
        default=DEFAULTS.noise_limit,
        help="flag a cell noisy when its round-to-round spread (IQR/median) of latency or "
        "speed-up exceeds this (%(default)s)",
    )
    p.add_argument("--pretrained", help="PyTorch reference: our model directory or bundled name")
    p.add_argument(
        "--checkpoint", type=Path, help="PyTorch reference: an authors'-format checkpoint"
    )
    p.add_argument("--config", default=DEFAULTS.config, help="with --checkpoint (%(default)s)")
    p.add_argument("--text-encoder", type=Path, help="with --checkpoint: BERT directory")
    p.add_argument(
        "--vocab", type=Path, help="with --checkpoint: vocab.txt if not in --text-encoder"
    )
    p.add_argument(
        "--report-dir", type=Path, help=f"where to write reports (default: {RUNS}/<model>)"
    )
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    _server_arguments(p)


def _server_arguments(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group("server load test (dit_deploy.bench.server_load)")
    s.add_argument("--server", metavar="URL", help="load-test a DIT Triton server at this URL")
    s.add_argument(
        "--concurrency",
        type=positive_int_list,
        default="1,4,16",
        help="requests in flight per level (default: %(default)s)",
    )
    s.add_argument(
        "--duration",
        type=positive_float,
        default=20.0,
        help="seconds per level (default: %(default)s)",
    )
    s.add_argument("--metrics-url", help="Triton's metrics (default: http://HOST:8002/metrics)")
    s.add_argument("--compare", type=Path, metavar="EXPORT_DIR", help="also run in-process")


def _server_main(args: argparse.Namespace) -> int:
    from . import server_load

    levels = [int(x) for x in args.concurrency.split(",")]  # checked by positive_int_list
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


def _check_writable_dir(path: Path) -> None:
    """Refuse a report directory that cannot be created or written, before the work: the
    directories are made, a probe file written, and whatever this made is removed again."""
    import tempfile

    made = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".dit-bench-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"--report-dir {path}: not a writable directory ({exc.strerror or exc}); choose "
            "another path"
        ) from None
    finally:
        for directory in made:  # deepest first
            with contextlib.suppress(OSError):
                directory.rmdir()


def bench_from_args(args: argparse.Namespace) -> int:
    """Run the benchmark, write the reports, print the table (or JSON); 1 if a cell failed."""
    if args.report_dir is not None:
        _check_writable_dir(args.report_dir)  # an unusable path fails before the work
    if args.server:
        return _server_main(args)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    report = run_bench(bench_options(args), log)
    if args.json:  # the command line's own output form, not a benchmark option
        report["command"] += " --json"
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
