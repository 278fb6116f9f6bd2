"""``dit-deploy quantize``: FP16/INT8 graphs for an export directory, verified on the CPU."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from ..atomic import write_text_atomic
from ..cli_types import fraction, non_negative_int, percentile, points, positive_int
from ..errors import ConfigError
from ..progress import Progress
from ..runtime.backends.table import derived_precisions

EPILOG = """examples:
  dit-deploy quantize exports/refcoco_vit_b --precision fp16
  dit-deploy quantize exports/refcoco_vit_b --precision int8 --calib-data data/refcoco \\
      --calib-size 512 --method entropy
  dit-deploy quantize exports/refcoco_vit_b --precision bf16   # OpenVINO, BF16 CPUs
  dit-deploy quantize exports/tiny --precision int8 --calib-data data/synthetic \\
      --exclude /mask_decoder/output_upscaling/MatMul --json report.json
  dit-deploy quantize exports/tiny --precision fp16 --auto
  dit-deploy quantize exports/tiny --precision int8 --auto --max-miou-drop 0.5
  dit-deploy quantize exports/tiny --precision int8 --plan reviewed_plan.json  # no search
  dit-deploy quantize exports/tiny --precision int8 --no-smooth   # no outlier migration
  dit-deploy verify exports/tiny --precision int8   # re-verify here, on another kind of CPU

Gates (units): --min-mask-iou is the pooled IoU (sum I / sum U over the held-out pairs) of the
new masks against the FP32 masks, a fraction in [0, 1]; --max-miou-drop is the allowed fall
of mIoU against the ground truth in POINTS (0.2 = 0.2 mIoU points, i.e. 60.0 -> 59.8);
--max-logit-error (optional) is max |logit error| / max |FP32 logit|, a fraction.
--auto searches which nodes to keep at higher precision (FP16: FP32 islands where a tensor
leaves the FP16 range or adds the most error; INT8: the nodes whose Q/DQ costs the most
accuracy) until the gates pass on search pairs (held out, not the verification pairs), and
writes the result as precision_plan.json beside the graphs (listed in manifest.json);
--plan reuses such a file without searching (on the same FP32 graphs: their sha256 is
checked). INT8 first moves activation outlier channels into the weights (--smooth ALPHA)
where that lowers the activation's simulated INT8 error on held-out pairs by 10% or more.

Nothing is written unless every layout keeps the accuracy floor; then the graphs land in
EXPORT_DIR as <role>.<precision>.onnx and manifest.json lists them under "precisions", with
what they were verified on (the CPU's numerics class, backend, agreement) under "verified"
and a few stored pairs (verification_pairs.npz) that re-verify them on another kind of CPU.
Without --calib-data/--eval-data, pairs come from generated synthetic scenes.
Exit codes: 0 written, 1 error or below the floor (nothing written), 2 bad arguments.
"""


DESCRIPTION = (
    "Make FP16 (FP32 islands) or INT8 (explicit Q/DQ, TensorRT-ready) graphs of an export "
    "directory, check them in ONNX Runtime on the CPU against the FP32 graphs (logits error, "
    "mask agreement, mIoU/oIoU change, latency) and add them to the export."
)


def register(subparsers) -> None:
    """``dit-deploy quantize``."""
    p = subparsers.add_parser(
        "quantize",
        help="FP16/INT8 graphs of an export, verified on the CPU against FP32",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(handler=run_from_args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Every ``dit-deploy quantize`` option, in ``--help`` order."""
    _add_target_arguments(p)
    _add_calibration_arguments(p)
    _add_fp16_arguments(p)
    _add_verification_arguments(p)
    _add_output_arguments(p)


def _add_target_arguments(p: argparse.ArgumentParser) -> None:
    """The export, the precision, and the plan search (--auto/--plan) options."""
    p.add_argument("export_dir", type=Path, help="an export directory (dit-deploy export)")
    p.add_argument(
        "--precision",
        choices=derived_precisions(),
        required=True,
        help="bf16: the FP32 graphs run in BF16 by OpenVINO (CPUs with AVX512-BF16/AMX); "
        "verified the same way, recorded in the manifest, no new graph file",
    )
    auto = p.add_mutually_exclusive_group()
    auto.add_argument(
        "--auto",
        action="store_true",
        help="search the nodes to keep at higher precision until the gates pass "
        "(gate defaults: mask IoU >= 0.999 for fp16, 0.99 for int8; mIoU drop <= 0.2 points); "
        "writes precision_plan.json",
    )
    auto.add_argument(
        "--plan",
        type=Path,
        metavar="FILE",
        help="reuse the nodes of a precision_plan.json written by --auto (no search)",
    )
    p.add_argument(
        "--search-size",
        type=positive_int,
        default=32,
        help="--auto: held-out pairs the search gates on (val split, another seed than "
        "--eval-data's pairs) (default: %(default)s)",
    )
    p.add_argument(
        "--keep-fp32",
        nargs="*",
        default=[],
        metavar="ROLE",
        help="graphs left FP32, e.g. text_encoder (default: convert every graph)",
    )


def _add_calibration_arguments(p: argparse.ArgumentParser) -> None:
    """The calibration group: INT8 ranges, smoothing, weight bits, the range cache."""
    from .int8 import CALIBRATION_METHODS, DEFAULT_OP_TYPES, DEFAULT_WEIGHT_BITS, WEIGHT_BITS
    from .smooth import DEFAULT_ALPHA

    cal = p.add_argument_group("calibration (INT8 ranges; FP16 --auto tensor ranges)")
    cal.add_argument("--calib-data", type=Path, help="dataset root (refer/preprocessed layout)")
    cal.add_argument("--calib-split", default="train", help="(default: %(default)s)")
    cal.add_argument(
        "--calib-size", type=positive_int, default=64, help="pairs (default: %(default)s)"
    )
    cal.add_argument(
        "--method",
        choices=CALIBRATION_METHODS,
        default="minmax",
        help="range calibration (default: %(default)s)",
    )
    cal.add_argument(
        "--percentile",
        type=percentile,
        default=99.999,
        help="for --method percentile (default: %(default)s)",
    )
    cal.add_argument(
        "--op-types",
        nargs="+",
        default=list(DEFAULT_OP_TYPES),
        help="op types to quantize (default: %(default)s)",
    )
    cal.add_argument(
        "--exclude", nargs="*", default=[], metavar="NODE", help="node names left unquantized"
    )
    cal.add_argument(
        "--smooth",
        type=fraction,
        default=DEFAULT_ALPHA,
        metavar="ALPHA",
        help="INT8: move activation outlier channels into the weights first (SmoothQuant "
        "migration strength in [0, 1]; adds one Mul per smoothed activation) "
        "(default: %(default)s)",
    )
    cal.add_argument(
        "--no-smooth",
        dest="smooth",
        action="store_const",
        const=None,
        help="INT8: quantize the activations as they are",
    )
    cal.add_argument(
        "--weight-bits",
        type=int,
        choices=sorted(WEIGHT_BITS),
        default=DEFAULT_WEIGHT_BITS,
        help="INT8: the second operand of every quantized MatMul/Conv. 7 gives the same "
        "masks on every x86 CPU (no 16-bit pair overflow without VNNI: each adjacent pair of "
        "MatMul weights sums to at most 128 in magnitude, other operands within +-64); 8 is a "
        "little more accurate where the CPU has VNNI/AMX, and is refused or re-verified on "
        "AVX2 (default: %(default)s)",
    )
    cal.add_argument(
        "--cache-dir",
        type=Path,
        help="calibration range cache (default: ~/.cache/dit_deploy/calibration)",
    )


def _add_fp16_arguments(p: argparse.ArgumentParser) -> None:
    """The FP16 group: op types and nodes kept FP32."""
    from .fp16 import DEFAULT_FP32_OPS

    f16 = p.add_argument_group("FP16")
    f16.add_argument(
        "--fp32-ops",
        nargs="*",
        default=list(DEFAULT_FP32_OPS),
        help="op types kept FP32 (default: %(default)s)",
    )
    f16.add_argument(
        "--fp32-nodes",
        nargs="*",
        default=[],
        metavar="NODE",
        help="node names kept FP32 (e.g. the first/last node)",
    )


def _add_verification_arguments(p: argparse.ArgumentParser) -> None:
    """The verification group: held-out pairs, gates, latency, threads."""
    ver = p.add_argument_group("verification (held-out pairs, ONNX Runtime CPU)")
    ver.add_argument("--eval-data", type=Path, help="dataset root (default: --calib-data)")
    ver.add_argument("--eval-split", default="val", help="(default: %(default)s)")
    ver.add_argument(
        "--eval-size", type=positive_int, default=64, help="pairs (default: %(default)s)"
    )
    ver.add_argument(
        "--min-mask-iou",
        type=fraction,
        help="gate: pooled mask IoU vs the FP32 masks, fraction in [0, 1] "
        "(default: --auto fp16 0.999, int8 0.99; else fp16 0.98, int8 0.90, bf16 0.99)",
    )
    ver.add_argument(
        "--max-miou-drop",
        type=points,
        metavar="POINTS",
        help="gate: largest mIoU fall vs FP32 in mIoU POINTS, 0.2 = 0.2 points "
        "(default: --auto 0.2; else fp16 1.0, int8 3.0, bf16 0.5)",
    )
    ver.add_argument(
        "--max-logit-error",
        type=fraction,
        metavar="FRACTION",
        help="gate (optional): max |logit error| as a fraction of the FP32 logits' largest "
        "magnitude, 0.01 = 1%%; for random-weight models whose masks show nothing",
    )
    ver.add_argument(
        "--latency-runs",
        type=non_negative_int,
        default=10,
        help="timed runs per chain, 0 to skip (default: %(default)s)",
    )
    ver.add_argument("--threads", type=positive_int, help="ONNX Runtime intra-op threads")
    ver.add_argument(
        "--eval-batch",
        type=positive_int,
        default=4,
        help="pairs per verification call; 1 bounds memory for ViT-B (default: %(default)s)",
    )


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    """The report options: JSON, progress bars, verbosity."""
    p.add_argument("--json", type=Path, help="also write the report as JSON here ('-': stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--verbose", action="store_true", help="list every node the precision plan keeps"
    )


def _progress_factory(quiet: bool) -> Callable[[str, int], Callable[[int], None]]:
    def make(desc: str, total: int) -> Callable[[int], None]:
        bar = Progress(desc, total, enabled=not quiet)

        def update(n: int) -> None:
            bar.update(n)
            if bar.done >= total:
                bar.close()

        return update

    return make


def format_table(result, verbose: bool = False) -> str:
    """The verification table: one row per layout; then the plan's kept nodes (the largest
    few per graph, every one with ``verbose``)."""
    head = (
        f"{'layout':<7} {'pairs':>5} {'max|d|':>8} {'mean|d|':>9} {'mask IoU':>9} "
        f"{'mIoU fp32':>9} {'mIoU':>7} {'d mIoU':>7} {'oIoU fp32':>9} {'oIoU':>7} "
        f"{'ms fp32':>8} {'ms':>8} {'speed':>6}  verdict"
    )
    rows = [
        f"{result.precision} vs fp32 (gates: mask IoU vs fp32 >= {result.floor.min_mask_iou}, "
        f"mIoU drop <= {result.floor.max_miou_drop_points:.2f} points"
        + (
            f", max logit error <= {result.floor.max_logit_error:.2%} of the FP32 range)"
            if result.floor.max_logit_error is not None
            else ")"
        ),
        head,
    ]
    for r in result.layouts:
        speed = r.latency_fp32_ms / r.latency_ms if r.latency_ms == r.latency_ms else float("nan")
        rows.append(
            f"{r.layout:<7} {r.pairs:>5} {r.logits_max_abs:>8.4f} {r.logits_mean_abs:>9.5f} "
            f"{r.mask_iou:>9.4f} {r.miou_fp32 * 100:>9.2f} {r.miou * 100:>7.2f} "
            f"{r.miou_change * 100:>+7.2f} {r.oiou_fp32 * 100:>9.2f} {r.oiou * 100:>7.2f} "
            f"{r.latency_fp32_ms:>8.1f} {r.latency_ms:>8.1f} {speed:>5.2f}x  "
            + ("ok" if r.ok else "FAILED: " + "; ".join(r.failures))
        )
    if result.plan is not None:
        rows.extend(format_plan(result.plan, None if verbose else PLAN_LINES))
    return "\n".join(rows)


PLAN_LINES = 5  # kept nodes shown per graph without --verbose (the plan file has them all)


def format_plan(plan, limit: int | None = None) -> list[str]:
    """The plan's kept nodes, one line each, with the error they were kept for: per graph the
    ``limit`` largest by FLOPs (None: all) and how many more the plan file lists."""
    high = "FP32" if plan.precision == "fp16" else "unquantized"
    rows = []
    for role, entry in plan.roles.items():
        smoothed = f"; {len(entry.smoothed)} activation(s) smoothed" if entry.smoothed else ""
        rows.append(f"{role}: {len(entry.kept)} node(s) kept {high}{smoothed}")
        largest = sorted(entry.kept, key=lambda k: -(k.flops or 0.0))
        shown = largest if limit is None else largest[:limit]
        for k in shown:
            measured = ""
            if k.error is not None and plan.precision == "fp16":
                measured = f" (adds {k.error:.3g} relative error in FP16)"
            elif k.error is not None:
                measured = f" (logits mean |error| {k.error:.3g} quantized alone)"
            rows.append(f"  {k.node} [{k.op_type}]: {k.reason}{measured}")
        if len(shown) < len(entry.kept):
            rows.append(
                f"  ... and {len(entry.kept) - len(shown)} smaller one(s): every node is in "
                "precision_plan.json (or run with --verbose)"
            )
    if plan.int8_flop_share is not None:
        rows.append(f"INT8 share of MatMul/Gemm/Conv FLOPs: {plan.int8_flop_share:.1%}")
    return rows


def _options(args: argparse.Namespace):
    from .int8 import Int8Options
    from .pipeline import QuantizeOptions
    from .samples import PairSource
    from .verify import Floor, default_floor

    calib = PairSource(args.calib_data, args.calib_split, args.calib_size)
    eval_data = args.eval_data or args.calib_data
    default = default_floor(args.precision, args.auto)
    floor = Floor.from_points(
        args.min_mask_iou if args.min_mask_iou is not None else default.min_mask_iou,
        args.max_miou_drop if args.max_miou_drop is not None else default.max_miou_drop_points,
        args.max_logit_error,
    )
    evaluation = PairSource(eval_data, args.eval_split, args.eval_size, seed=1)
    return QuantizeOptions(
        precision=args.precision,
        calib=calib if args.precision == "int8" or args.auto else None,
        eval=evaluation,
        auto=args.auto,
        plan=args.plan,
        search=PairSource(eval_data, args.eval_split, args.search_size, seed=2),
        keep_fp32=tuple(args.keep_fp32),
        int8=Int8Options(
            method=args.method,
            op_types=tuple(args.op_types),
            exclude=tuple(args.exclude),
            percentile=args.percentile,
            smooth=args.smooth,
            weight_bits=args.weight_bits,
        ),
        fp32_ops=tuple(args.fp32_ops),
        fp32_nodes=tuple(args.fp32_nodes),
        floor=floor,
        cache_dir=args.cache_dir,
        threads=args.threads,
        latency_runs=args.latency_runs,
        eval_batch=args.eval_batch,
    )


def _write_json(target: Path | None, data: dict, stdout=None) -> None:
    if target is None:
        return
    text = json.dumps(data, indent=2, default=str) + "\n"
    if str(target) == "-":
        (stdout or sys.stdout).write(text)
    else:
        write_text_atomic(target, text)


def _check_json_target(target: Path | None) -> None:
    """Fail before the work if the JSON report could not be written."""
    if target is None or str(target) == "-":
        return
    if target.is_dir():
        raise ConfigError(f"--json {target} is a directory; give a file path")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ConfigError(f"--json {target}: directory {parent} does not exist or is not writable")


def run_from_args(args: argparse.Namespace) -> int:
    """Options -> :class:`QuantizeOptions` -> :func:`run_quantize`; prints the table, or with
    ``--json -`` the JSON report alone on stdout."""
    _check_json_target(args.json)
    if str(args.json) != "-":
        return _run(args, print, sys.stdout)
    stdout = sys.stdout
    # ONNX Runtime's entropy and percentile calibrators print their progress: to stderr, so
    # that stdout carries the JSON report and nothing else
    with contextlib.redirect_stdout(sys.stderr):
        return _run(args, lambda _m: None, stdout)


def _run(args: argparse.Namespace, log: Callable[[str], None], stdout) -> int:
    from .pipeline import QuantizeFailed, run_quantize

    opts = _options(args)
    if args.precision == "int8" and args.calib_data is None:
        log("note: no --calib-data: calibrating on generated synthetic scenes")
    try:
        result = run_quantize(args.export_dir, opts, log, _progress_factory(args.quiet))
    except QuantizeFailed as failed:
        log(format_table(failed.result, args.verbose))
        _write_json(args.json, failed.result.to_dict(), stdout)
        raise
    log(format_table(result, args.verbose))
    _write_json(args.json, result.to_dict(), stdout)
    files = ", ".join(g.file for g in result.graphs)
    if any("execution" in g.detail for g in result.graphs):
        log(
            f"recorded {result.precision} (the FP32 graphs {files}, executed as "
            f"{result.graphs[0].detail['execution']}) in {args.export_dir / 'manifest.json'}"
        )
    else:
        log(f"wrote {files} and updated {args.export_dir / 'manifest.json'}")
    return 0
