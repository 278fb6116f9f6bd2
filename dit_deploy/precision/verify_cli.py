"""``dit-deploy verify``: re-verify an export's precisions on this CPU and record it."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli_types import positive_int
from ..runtime.backends.table import cpu_numerics_backends, derived_precisions

DESCRIPTION = """Re-verify an export's FP16/INT8/BF16 precisions on this machine's CPU.

A precision is verified on the CPU that quantized it, and its numerics depend on that CPU's
kernels (INT8 without VNNI, BF16 units, ARM). The runtime checks the record at load: on a
CPU of another numerics class it re-verifies on the stored pairs each time the export is
opened (Python) or refuses (C++). This command runs the stored pairs here once and, if their
masks agree with FP32 within the tolerance of the recorded agreement, adds this CPU to the
precision's "verified" record in manifest.json, so every runtime accepts it here."""

EPILOG = """examples:
  dit-deploy verify runs/dit-deploy/export                      # every verified precision
  dit-deploy verify runs/dit-deploy/export --precision int8 --backend openvino
  dit-deploy verify exports/vit_b --precision int8 --json -

Exit codes: 0 recorded, 1 the masks disagree here or nothing to check (nothing written),
2 bad arguments."""


def register(subparsers) -> None:
    """``dit-deploy verify``."""
    p = subparsers.add_parser(
        "verify",
        help="re-verify an export's precisions on this CPU (another kind of CPU than "
        "where they were quantized)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("export_dir", type=Path, help="an export directory with verified precisions")
    p.add_argument(
        "--precision",
        action="append",
        choices=derived_precisions(),
        help="the precision to re-verify; repeatable (default: every verified one)",
    )
    p.add_argument(
        "--backend",
        choices=cpu_numerics_backends(),
        help="the runtime that runs the stored pairs (default: the one that verified it)",
    )
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: all)")
    p.add_argument("--json", type=Path, help="also write the records as JSON here ('-': stdout)")
    p.set_defaults(handler=run_from_args)


def run_from_args(args: argparse.Namespace) -> int:
    from ..errors import ArtifactError
    from ..runtime.export import Export
    from .cli import _check_json_target, _write_json
    from .record import reverify_here

    _check_json_target(args.json)  # before the work: a report that cannot be written
    manifest = Export.open(args.export_dir).manifest
    precisions = args.precision or sorted(manifest.precisions)
    if not precisions:
        raise ArtifactError(
            f"{args.export_dir} has no precisions to verify; make some with dit-deploy quantize"
        )
    log = (lambda _m: None) if str(args.json) == "-" else print
    records = {}
    for precision in precisions:
        record = reverify_here(args.export_dir, precision, args.backend, args.threads)
        records[precision] = record
        agree = ", ".join(f"{k} {v:.4f}" for k, v in record["stored_pairs_agreement"].items())
        log(
            f"{precision}: verified here ({record['kernels']}, numerics {record['numerics']}, "
            f"{record['backend']}): stored pairs' mask agreement {agree}; recorded in "
            f"{args.export_dir / 'manifest.json'}"
        )
    _write_json(args.json, records)
    return 0
