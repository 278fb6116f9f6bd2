"""``dit-deploy tune EXPORT``: measure, record and show the CPU throughput plan of an export.

Runs workers x threads x batch candidates on this machine (each in its own processes, started
together) and records the one with the most pairs/s for ``dit-deploy batch`` (its ``auto``
workers, threads and batch size) and ``dit-deploy serve`` (its instances and threads when
not given). A plan recorded for this export, backend version and machine is shown without
measuring again unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli_types import HelpFormatter, window_seconds

EPILOG = """examples:
  dit-deploy tune runs/dit-deploy/export                        # fp32, ONNX Runtime
  dit-deploy tune runs/dit-deploy/export --precision int8 --backend openvino --force
  dit-deploy tune runs/dit-deploy/export --json                 # the recorded plan as JSON
"""


def register(subparsers) -> None:
    from .backends import backend_names, backend_row
    from .manifest import LAYOUT_ROLES

    cpu_backends = [n for n in backend_names() if "cpu" in backend_row(n).devices]

    p = subparsers.add_parser(
        "tune",
        help="measure the CPU throughput plan (workers x threads x batch) of an export",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument("export", type=Path, metavar="EXPORT_DIR", help="an export directory")
    p.add_argument("--backend", default="onnxruntime", choices=cpu_backends,
                   help="a runtime with a CPU path")  # fmt: skip
    p.add_argument("--precision", default="fp32", help="fp32, or a precision of the export")
    p.add_argument("--layout", choices=tuple(LAYOUT_ROLES), default=None,
                   help="graphs (None: fused if exported)")  # fmt: skip
    p.add_argument("--seconds", type=window_seconds, default=3.0,
                   help="measuring window per candidate")  # fmt: skip
    p.add_argument("--force", action="store_true", help="measure even if a plan is recorded")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(handler=run)


def format_plan(plan: dict) -> str:
    """The measured table, the winner (batch jobs) and serve's row marked, and what it was
    measured for."""
    from .throughput import serving_choice

    chosen, served = plan["chosen"], serving_choice(plan)
    lines = [
        f"throughput plan: {plan['backend']} {plan['backend_version']} {plan['precision']} "
        f"{plan['layout']}; {plan['kernels']}, {plan['cores']} cores ({plan['cpu'] or 'CPU'}); "
        f"measured {plan['created']}, {plan['seconds']:g} s each",
        f"  {'workers':>7} {'threads':>7} {'batch':>5} {'pairs/s':>9}",
    ]
    for row in plan["measured"]:
        marks = [m for m, r in (("chosen", chosen), ("serve", served)) if row == r]
        mark = f"  <- {', '.join(marks)}" if marks else ""
        lines.append(f"  {row['workers']:>7} {row['threads']:>7} {row['batch']:>5} "
                     f"{row['pairs_per_s']:>9.1f}{mark}")  # fmt: skip
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from .throughput import plan_for, tune

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.force:
        plan = tune(args.export, args.backend, args.precision, args.layout, args.seconds, log)
    else:
        plan = plan_for(args.export, args.backend, args.precision, args.layout, args.seconds, log)
    print(json.dumps(plan, indent=1) if args.json else format_plan(plan))
    return 0
