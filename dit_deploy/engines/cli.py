"""``dit-deploy engines`` (and ``python export/to_trt.py``): compile an export's typed ONNX
graphs into TensorRT engines with a JSON sidecar each."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ..cli_types import HelpFormatter, int_in, positive_float, positive_int
from ..runtime.backends.table import backend_row
from .build import LAYOUTS, EngineOptions

EPILOG = """examples (on a machine with an NVIDIA GPU and pip install 'dit-deploy[gpu]'):
  dit-deploy engines exports/refcoco_vit_b --precision fp16 --max-batch 8
  dit-deploy engines exports/refcoco_vit_b --precision fp32 fp16 int8 --layout fused
  dit-deploy engines exports/refcoco_vit_b --precision int8 --opt-batch 4 \\
      --timing-cache ~/.cache/dit_deploy/timing.cache --builder-opt-level 5

The precision is the graph's (dit-deploy quantize makes the fp16/int8 graphs): TensorRT 11 is
strongly typed only, and TensorRT 10 is run strongly typed too, so both build the same engine.
FP32 engines are built with TF32 off. --timing-cache PATH names a family of files, one per
GPU architecture and TensorRT version (timing.cache -> timing.sm90.trt10.13.3.cache), so one
path may be shared by several GPU types without mixing their timings.
Each <role>.<precision>.engine gets a <role>.<precision>.engine.json sidecar (TensorRT
version, GPU, compute capability, profile, I/O, sha256 of the source ONNX, preprocessing
constants), checked whenever the engine loads.
Exit codes: 0 built; 1 no GPU/TensorRT/cuda-python here or a bad export (one line naming
it and the fix); 2 bad options.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("export_dir", type=Path, help="an export directory (manifest.json)")
    p.add_argument(
        "--precision",
        nargs="+",
        choices=backend_row("tensorrt").precisions,
        default=["fp32"],
        help="graph precision(s) to build (default: %(default)s)",
    )
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="all",
        help="which graphs to build (default: %(default)s)",
    )
    p.add_argument(
        "--max-batch", type=positive_int, default=8, help="profile maximum (default: %(default)s)"
    )
    p.add_argument(
        "--opt-batch", type=positive_int, help="profile optimum (default: max-batch // 2)"
    )
    p.add_argument(
        "--min-batch", type=positive_int, default=1, help="profile minimum (default: %(default)s)"
    )
    p.add_argument(
        "--workspace-gb",
        type=positive_float,
        default=4.0,
        help="workspace pool, GiB (default: %(default)s)",
    )
    p.add_argument(
        "--timing-cache",
        type=Path,
        help="timing cache path; the file used is PATH with the GPU's sm and TensorRT "
        "version in its name, read and updated after each engine is written",
    )
    p.add_argument(
        "--builder-opt-level",
        type=int_in(0, 5),
        default=3,
        help="builder optimisation 0..5 (default: %(default)s)",
    )
    p.add_argument(
        "--hardware-compat",
        choices=["none", "ampere_plus", "same_compute_capability"],
        default="none",
        help="none: GPUs of this compute capability; same_compute_capability needs "
        "TensorRT >= 10.9 (default: %(default)s)",
    )
    p.add_argument(
        "--version-compat",
        action="store_true",
        help="engines that later TensorRT versions can run (same major, or 11 for a 10 engine)",
    )
    p.add_argument("--json", action="store_true", help="print the sidecars as JSON")


def options_from_args(args: argparse.Namespace, command: str) -> EngineOptions:
    return EngineOptions(
        export_dir=args.export_dir,
        precisions=tuple(dict.fromkeys(args.precision)),
        layout=args.layout,
        max_batch=args.max_batch,
        opt_batch=args.opt_batch,
        min_batch=args.min_batch,
        workspace_gb=args.workspace_gb,
        builder_optimization_level=args.builder_opt_level,
        timing_cache=args.timing_cache.expanduser() if args.timing_cache else None,
        hardware_compatibility=args.hardware_compat,
        version_compatible=args.version_compat,
        command=command,
    )


def _report(paths: list[Path], as_json: bool) -> None:
    from ..runtime.engine_sidecar import read_sidecar

    sidecars = [read_sidecar(p) for p in paths]
    if as_json:
        print(json.dumps([s.to_dict() for s in sidecars], indent=2))
        return
    print(f"{'graph':<13} {'engine':<28} {'MB':>8} {'s':>7}  TensorRT / GPU")
    for path, s in zip(paths, sidecars, strict=True):
        print(
            f"{s.role:<13} {s.engine_file:<28} {path.stat().st_size / 1e6:>8.1f} "
            f"{s.build['seconds']:>7.1f}  {s.tensorrt_version} / {s.gpu_name} "
            f"(sm {s.compute_capability})"
        )


def run(args: argparse.Namespace) -> int:
    """The ``engines`` verb: options -> :func:`build_engines` -> table or JSON."""
    from .build import build_engines

    command = "dit-deploy engines " + " ".join(shlex.quote(a) for a in _argv_of(args))
    options = options_from_args(args, command)
    _report(build_engines(options, log=lambda m: print(m, file=sys.stderr)), args.json)
    return 0


def _argv_of(args: argparse.Namespace) -> list[str]:
    argv = [str(args.export_dir), "--precision", *args.precision]
    if args.layout != "all":
        argv += ["--layout", args.layout]
    argv += ["--max-batch", str(args.max_batch)]
    if args.opt_batch:
        argv += ["--opt-batch", str(args.opt_batch)]
    if args.min_batch != 1:
        argv += ["--min-batch", str(args.min_batch)]
    if args.hardware_compat != "none":
        argv += ["--hardware-compat", args.hardware_compat]
    if args.version_compat:
        argv.append("--version-compat")
    return argv


def register(subparsers) -> None:
    """Add the ``engines`` verb to the ``dit-deploy`` front."""
    p = subparsers.add_parser(
        "engines",
        help="build TensorRT engines (GPU machines)",
        description="Build TensorRT engines (one per graph) from an export directory's "
        "FP32/FP16/INT8 ONNX graphs, with an optimisation profile over the batch axis, and "
        "write a JSON sidecar beside each engine.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(handler=run)
