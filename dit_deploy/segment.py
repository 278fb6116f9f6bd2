"""``dit-deploy segment IMAGE TEXT [TEXT ...]``: the mask of each expression in one image.

For each expression: the mask at the image's size (1-bit grayscale PNG, 0 / 255) and an
overlay (the image dimmed outside the mask, the mask outlined), both written atomically into
``--out-dir`` as ``<image stem>.<k>.mask.png`` and ``<image stem>.<k>.overlay.png``, and one
line (or ``--json``) with the score, the mask's share of the image and the paths. The
expressions of one call run as one batch of the in-process Predictor (no torch).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import write_bytes_atomic
from .cli_types import HelpFormatter, positive_int
from .errors import ArtifactError, ConfigError

if TYPE_CHECKING:
    import numpy as np

MAIN_JOB_EXPORT = Path("runs") / "dit-deploy" / "export"
BUNDLED_MODEL = "dit-tiny-synthetic"
OVERLAY_COLOUR = (0, 230, 255)

EPILOG = f"""examples:
  dit-deploy segment horse.jpg "the gray horse with a blue halter"
  dit-deploy segment street.jpg "man on the left" "the red car" --out-dir masks/ --json
  dit-deploy segment horse.jpg "the horse" --export exports/refcoco_vit_b --precision int8
the export: --export, else the main job's ({MAIN_JOB_EXPORT}), else the bundled
{BUNDLED_MODEL} exported on first use (needs the torch extra once).
"""


@dataclass(frozen=True)
class Segmented:
    """One expression's result, as printed and as --json writes it."""

    text: str
    score: float
    area: float  # share of the image's pixels in the mask, 0..1
    mask_png: Path
    overlay_png: Path

    def to_json(self) -> dict:
        return {"text": self.text, "score": self.score, "area": self.area,
                "mask_png": str(self.mask_png), "overlay_png": str(self.overlay_png)}  # fmt: skip


def default_export(log, model: str | None = None) -> Path:
    """``model``'s export (a bundled name or a model directory, exported once under
    ``runs/exports``); without one, the main job's export when it exists, else the bundled
    model's."""
    if model is None and (MAIN_JOB_EXPORT / "manifest.json").is_file():
        return MAIN_JOB_EXPORT
    name = model or BUNDLED_MODEL
    out = Path("runs") / "exports" / Path(name).name
    if model is not None or not (out / "manifest.json").is_file():
        try:
            from .exporters.onnx_export import export_pretrained
        except ModuleNotFoundError as exc:
            raise ArtifactError(
                f"no export to run: pass --export DIR, run the main job once (dit-deploy), or "
                f"install the torch extra to export the bundled model ({exc.name} missing)"
            ) from None
        export_pretrained(name, out, log)  # reuses a valid export of the same weights
    return out


def segment(
    predictor, image: Path, texts: list[str], out_dir: Path, rgb: np.ndarray | None = None
) -> tuple[list[Segmented], float]:
    """Run ``texts`` on ``image`` as one batch; write the PNGs. Returns the results and the
    batch's milliseconds (the graphs, pre- and post-processing). ``rgb``: the image as
    ``load_image`` reads it, when the caller has it already (the overlays' background)."""
    from .mask_codec import encode_png
    from .preprocess import load_image

    if rgb is None:  # once, for the overlays (the Predictor loads it the same way)
        rgb = load_image(image)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = predictor.predict_batch([(image, t) for t in texts])
    ms = (time.perf_counter() - start) * 1e3
    out = []
    for k, (text, result) in enumerate(zip(texts, results, strict=True)):
        mask_png = out_dir / f"{image.stem}.{k}.mask.png"
        overlay_png = out_dir / f"{image.stem}.{k}.overlay.png"
        write_bytes_atomic(mask_png, encode_png(result.mask))
        write_bytes_atomic(overlay_png, overlay_png_bytes(rgb, result.mask))
        out.append(Segmented(text, float(result.score), float(result.mask.mean()), mask_png,
                             overlay_png))  # fmt: skip
    return out, ms


def overlay_png_bytes(rgb, mask) -> bytes:
    """The overlay of ``mask`` (bool (H, W)) on ``rgb`` (uint8 (H, W, 3)) at the image's own
    size, as PNG bytes (what ``segment`` writes and the demo page shows)."""
    import io

    from .gallery import overlay

    buf = io.BytesIO()
    overlay(rgb, mask, OVERLAY_COLOUR, long_side=None).save(buf, format="PNG")
    return buf.getvalue()


def register(subparsers) -> None:
    from .runtime.backends import backend_names

    p = subparsers.add_parser(
        "segment",
        help="segment one image: the mask of each expression (PNG + overlay)",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument("image", type=Path, metavar="IMAGE", help="a JPEG, PNG, WebP, BMP, TIFF or GIF")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="referring expressions")
    p.add_argument(
        "--export",
        type=Path,
        default=None,
        help="export directory (None: the main job's, else the bundled model's; see below)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="instead of --export: a bundled model name or a model directory, exported on "
        "first use into runs/exports/ (needs the torch extra)",
    )
    p.add_argument("--backend", default="onnxruntime", choices=backend_names(), help="runtime")
    p.add_argument("--precision", default="fp32", help="fp32, or a precision of the export")
    p.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: the backend's first device)"
    )
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (None: all)")
    p.add_argument("--out-dir", type=Path, default=Path("runs") / "segment", help="PNGs here")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from .runtime import Predictor

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    from .preprocess import load_image

    if args.export and args.model:
        raise ConfigError("pass --export or --model, not both")
    rgb = load_image(args.image)  # a bad image is named before any export is made
    export = args.export or default_export(log, args.model)
    predictor = Predictor(export, backend=args.backend, precision=args.precision,
                          device=args.device, threads=args.threads)  # fmt: skip
    results, ms = segment(predictor, args.image, list(args.texts), args.out_dir, rgb)
    if args.json:
        doc = {"image": str(args.image), "export": str(export), "backend": args.backend,
               "precision": predictor.precision, "ms": round(ms, 2),
               "results": [r.to_json() for r in results]}  # fmt: skip
        print(json.dumps(doc))
        return 0
    print(f"{args.image} ({export}, {args.backend} {predictor.precision}, {ms:.0f} ms):")
    for r in results:
        print(f'  "{r.text}": score {r.score:.3f}, {r.area:.1%} of the image -> {r.mask_png}, '
              f"{r.overlay_png}")  # fmt: skip
    return 0
