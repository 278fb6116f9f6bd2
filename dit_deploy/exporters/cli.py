"""``dit-deploy export`` / ``dit-deploy validate``: a DIT model to ONNX, or re-check an export."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli_types import HelpFormatter, fraction, int_in, non_negative_float
from ..errors import ConfigError
from ..runtime.manifest import LAYOUT_ROLES
from .validate import Tolerance

EPILOG = """examples:
  dit-deploy export --checkpoint dit_refcoco.pth --config layer_wise_vit_b \\
      --text-encoder bert-base-uncased/ --out exports/refcoco_vit_b --layout split
  dit-deploy export --pretrained dit-tiny-synthetic --out exports/tiny --layout both
  dit-deploy validate exports/tiny --pretrained dit-tiny-synthetic
"""

VALIDATE_EPILOG = """examples:
  dit-deploy validate exports/tiny --pretrained dit-tiny-synthetic
  dit-deploy validate exports/refcoco_vit_b --checkpoint dit_refcoco.pth \
      --config layer_wise_vit_b --text-encoder bert-base-uncased/

The graphs and vocabulary are first checked against the manifest's sha256: a changed file is
an error naming it, before anything runs.
"""


def _model_args(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("model (one of --checkpoint or --pretrained)")
    src.add_argument("--checkpoint", type=Path, help="authors'-format DIT checkpoint (.pth)")
    src.add_argument(
        "--config", default="layer_wise_vit_b", help="registry name (default: %(default)s)"
    )
    src.add_argument("--text-encoder", type=Path, help="BERT directory (vocab.txt, config.json)")
    src.add_argument("--vocab", type=Path, help="vocab.txt, if not in --text-encoder")
    src.add_argument("--pretrained", help="our model directory or a bundled model name")
    tol = p.add_argument_group("validation against PyTorch")
    tol.add_argument(
        "--atol",
        type=non_negative_float,
        default=Tolerance.atol,
        help="absolute tolerance (%(default)s)",
    )
    tol.add_argument(
        "--rtol",
        type=non_negative_float,
        default=Tolerance.rtol,
        help="relative tolerance, times max|reference| (%(default)s)",
    )
    tol.add_argument(
        "--min-mask-iou",
        type=fraction,
        default=Tolerance.min_mask_iou,
        help="minimum IoU of thresholded masks (%(default)s)",
    )
    tol.add_argument(
        "--images",
        type=Path,
        nargs="*",
        help="validation images (default: generated synthetic scenes)",
    )
    tol.add_argument("--texts", nargs="*", help="one expression per --images entry")


def _load_model(args: argparse.Namespace):
    from ..model.dit_model import DITModel

    if args.pretrained and args.checkpoint:
        raise ConfigError("give --checkpoint or --pretrained, not both")
    if args.pretrained:
        return DITModel.from_pretrained(args.pretrained), {"pretrained": str(args.pretrained)}
    if not args.checkpoint:
        raise ConfigError("give --checkpoint (with --config/--text-encoder) or --pretrained")
    from ..hashing import sha256_file

    model = DITModel.from_checkpoint(
        args.checkpoint, config=args.config, text_encoder=args.text_encoder, vocab=args.vocab
    )
    return model, {"checkpoint": args.checkpoint.name, "sha256": sha256_file(args.checkpoint)}


def _pairs(args: argparse.Namespace):
    if not args.images:
        return None
    texts = args.texts or []
    if len(texts) != len(args.images):
        raise ConfigError("give one --texts expression per --images file")
    return list(zip(args.images, texts, strict=True))


DESCRIPTION = (
    "Export a DIT model to ONNX (split or fused graphs), validate every output against "
    "PyTorch in ONNX Runtime, and write an export directory (graphs + vocab.txt + "
    "manifest.json) only if all outputs pass. 'dit-deploy validate DIR' re-checks an export."
)


def register(subparsers) -> None:
    """``dit-deploy export`` and ``dit-deploy validate``."""
    p = subparsers.add_parser(
        "export",
        help="a DIT model (checkpoint or pretrained) -> validated ONNX export directory",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model_args(p)
    p.add_argument("--out", type=Path, required=True, help="export directory to write")
    p.add_argument(
        "--layout",
        choices=[*LAYOUT_ROLES, "both"],
        default="split",
        help="split: text encoder + DIT encoder + mask decoder; fused: one graph "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--opset", type=int_in(17, 20), default=17, help="ONNX opset, 17..20 (default: %(default)s)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(handler=export_from_args)
    v = subparsers.add_parser(
        "validate",
        help="re-run an export directory against the PyTorch model",
        description="Re-run an export directory in ONNX Runtime (CPU) against the PyTorch model.",
        epilog=VALIDATE_EPILOG,
        formatter_class=HelpFormatter,
    )
    v.add_argument("export_dir", type=Path, help="the export directory to re-check")
    _model_args(v)
    v.set_defaults(handler=validate_from_args)


def export_from_args(args: argparse.Namespace) -> int:
    from .onnx_export import run_export

    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} is a file; give a directory path")
    model, source = _load_model(args)
    tol = Tolerance(args.atol, args.rtol, args.min_mask_iou)
    result = run_export(
        model, args.out, args.layout, args.opset, tol, _pairs(args), source, args.overwrite
    )
    size = sum(f.stat().st_size for f in result.out_dir.iterdir()) / 1e6
    print(
        f"exported {len(result.graphs)} graph(s), all outputs within tolerance -> "
        f"{result.out_dir} ({size:.1f} MB)"
    )
    return 0


def validate_from_args(args: argparse.Namespace) -> int:
    from ..runtime.export import Export
    from .onnx_export import default_validation_pairs, validate_directory
    from .validate import raise_on_failures

    export = Export.open(args.export_dir)
    for layout in export.layouts:  # what the manifest recorded is what runs, or an error
        export.verify(export.roles(layout), "fp32")
    manifest = export.manifest
    model, _ = _load_model(args)
    pairs = _pairs(args) or default_validation_pairs()
    checks = validate_directory(
        args.export_dir, manifest, model, pairs, Tolerance(args.atol, args.rtol, args.min_mask_iou)
    )
    for check in checks:
        print(check.line())
    raise_on_failures(checks, f"{args.export_dir} does not match the PyTorch model")
    print(f"{args.export_dir}: all {len(checks)} outputs within tolerance")
    return 0
