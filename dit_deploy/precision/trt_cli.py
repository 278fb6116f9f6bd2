"""``python export/to_trt.py``: compile an export's typed ONNX graphs into TensorRT engines."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError, DITError

EPILOG = """examples (on a machine with an NVIDIA GPU and pip install 'dit-deploy[gpu]'):
  python export/to_trt.py exports/refcoco_vit_b --precision fp16 --max-batch 8
  python export/to_trt.py exports/refcoco_vit_b --precision int8 --max-batch 8 --opt-batch 4 \\
      --timing-cache ~/.cache/dit_deploy/timing.cache --builder-opt-level 5

The precision is the graph's (export/quantize.py makes the fp16/int8 graphs): TensorRT 11 is
strongly typed only, and TensorRT 10 is run strongly typed too, so both build the same engine.
Each <role>.<precision>.engine gets a <role>.<precision>.engine.json sidecar (TensorRT version,
GPU, compute capability, profile, I/O, sha256 of the source ONNX, preprocessing constants).
Exit codes: 0 built, 1 error, 2 no GPU/TensorRT here or bad arguments.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="export/to_trt.py",
        description="Build TensorRT engines (one per graph) from an export directory's "
        "FP32/FP16/INT8 ONNX graphs, with an optimisation profile over the batch axis, and "
        "write a JSON sidecar beside each engine.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("export_dir", type=Path)
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32")
    p.add_argument(
        "--layout",
        choices=["split", "fused", "all"],
        default="all",
        help="which graphs to build (default: every graph of the export)",
    )
    p.add_argument("--max-batch", type=int, default=8, help="profile maximum (default: 8)")
    p.add_argument("--opt-batch", type=int, help="profile optimum (default: max-batch // 2)")
    p.add_argument("--min-batch", type=int, default=1, help="profile minimum (default: 1)")
    p.add_argument("--workspace-gb", type=float, default=4.0, help="workspace pool (default: 4)")
    p.add_argument("--timing-cache", type=Path, help="timing cache file, read and updated")
    p.add_argument(
        "--builder-opt-level", type=int, default=3, help="builder optimisation 0..5 (default: 3)"
    )
    p.add_argument(
        "--hardware-compat",
        choices=["none", "ampere_plus", "same_compute_capability"],
        default="none",
        help="engines that run on other GPUs (default: none = this GPU model)",
    )
    p.add_argument(
        "--version-compat",
        action="store_true",
        help="engines that later TensorRT versions of the same major can run",
    )
    p.add_argument("--json", type=Path, help="write the sidecars' summary as JSON here")
    return p


def _command(argv: Sequence[str]) -> str:
    return "python export/to_trt.py " + " ".join(shlex.quote(a) for a in argv)


def _roles(manifest, layout: str) -> list[str]:
    from ..runtime.manifest import FUSED_GRAPHS, SPLIT_GRAPHS

    wanted = {"split": SPLIT_GRAPHS, "fused": FUSED_GRAPHS}.get(layout)
    return [r for r in manifest.graphs if wanted is None or r in wanted]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = _command(argv)
    try:
        from ..runtime.manifest import read_manifest
        from .trt_build import BuildOptions

        options = BuildOptions(
            max_batch=args.max_batch,
            opt_batch=args.opt_batch,
            min_batch=args.min_batch,
            workspace_gb=args.workspace_gb,
            builder_optimization_level=args.builder_opt_level,
            timing_cache=args.timing_cache,
            hardware_compatibility=args.hardware_compat,
            version_compatible=args.version_compat,
        )
        manifest = read_manifest(args.export_dir)
        roles = _roles(manifest, args.layout)
        specs = {role: manifest.graph(role, args.precision) for role in roles}
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DITError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    from ..runtime.devices import gpu_unavailable_reason

    reason = gpu_unavailable_reason()
    if reason is not None:
        print(
            f"error: cannot build TensorRT engines here: {reason}.\n"
            f"The {args.precision} graphs of {args.export_dir} are ready "
            f"({', '.join(s.file for s in specs.values())}); on a machine with an NVIDIA GPU, "
            f"pip install 'dit-deploy[gpu]' and run:\n  {command}",
            file=sys.stderr,
        )
        return 2
    try:
        from .trt_build import build_engine

        sidecars = [
            build_engine(args.export_dir, manifest, role, spec, args.precision, options, command)
            for role, spec in specs.items()
        ]
    except DITError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{'graph':<13} {'engine':<28} {'MB':>8} {'s':>7}  TensorRT / GPU")
    for s in sidecars:
        size = (args.export_dir / s.engine_file).stat().st_size / 1e6
        print(
            f"{s.role:<13} {s.engine_file:<28} {size:>8.1f} {s.build['seconds']:>7.1f}  "
            f"{s.tensorrt_version} / {s.gpu_name} (sm {s.compute_capability})"
        )
    if args.json:
        args.json.write_text(json.dumps([s.to_dict() for s in sidecars], indent=2) + "\n")
    return 0
