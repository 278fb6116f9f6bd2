"""INT8 recipes on one export, one run: accuracy against FP32, INT8 share, and latency.

Each recipe quantizes a private copy of the export with ``run_quantize`` (the library call
``dit-deploy quantize`` makes), on the same calibration, verification and search pairs:

- ``plain``: every MatMul/Gemm/Conv INT8, min-max ranges, activations as they are;
- ``smooth``: the same after SmoothQuant migration (``--smooth``, default strength);
- ``auto-nosmooth``: ``--auto --no-smooth`` (the search without migration);
- ``auto``: ``--auto`` (migration, then the search: the default of ``dit-deploy run``).

Then the FP32 graphs and every recipe's INT8 graphs run a whole ``predict_batch`` (batch 1,
both layouts) in interleaved rounds in this process, so their ratios share the machine's
state. Usage::

    python benchmarks/int8_recipes.py --out runs/int8-recipes
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

RECIPES = {
    "plain": {"auto": False, "smooth": None},
    "smooth": {"auto": False, "smooth": "default"},
    "auto-nosmooth": {"auto": True, "smooth": None},
    "auto": {"auto": True, "smooth": "default"},
}


class _Cell:
    """A Predictor on one recipe's graphs, timed on one prepared pair (interleave's cell)."""

    def __init__(
        self, label: str, export: Path, layout: str, precision: str, threads: int, pairs: list
    ):
        from dit_deploy.runtime import Predictor

        self.label, self.pairs = label, pairs
        self.predictor = Predictor(export, layout=layout, precision=precision, threads=threads)

    def time(self, batch: int, runs: int) -> list[float]:
        pairs = self.pairs[:batch]
        out = []
        for _ in range(runs):
            start = time.perf_counter()
            self.predictor.predict_batch(pairs)
            out.append(time.perf_counter() - start)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs") / "int8-recipes")
    parser.add_argument("--model", default="dit-tiny-synthetic", help="bundled name or dir")
    parser.add_argument("--export", type=Path, help="an existing export (default: export --model)")
    parser.add_argument("--pairs", type=int, default=64, help="calibration and verification")
    parser.add_argument("--search-pairs", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=20, help="timed calls per cell per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=",".join(RECIPES), help="recipes, comma-separated")
    args = parser.parse_args()
    unknown = [name for name in args.only.split(",") if name not in RECIPES]
    if unknown:
        parser.error(f"--only {unknown}: recipes are {', '.join(RECIPES)}")
    if args.export is not None and not (args.export / "manifest.json").is_file():
        parser.error(f"--export {args.export}: no export there (no manifest.json)")

    from dit_deploy.bench.machine import describe, machine_load
    from dit_deploy.bench.matrix import latency_summary
    from dit_deploy.bench.rounds import interleave
    from dit_deploy.precision.int8 import Int8Options
    from dit_deploy.precision.pipeline import QuantizeFailed, QuantizeOptions, run_quantize
    from dit_deploy.precision.samples import PairSource
    from dit_deploy.precision.smooth import DEFAULT_ALPHA

    args.out.mkdir(parents=True, exist_ok=True)
    source = args.export
    if source is None:
        from dit_deploy.exporters.onnx_export import export_pretrained

        source = args.out / "export"
        export_pretrained(args.model, source, log=lambda *_: None)
    start_load = machine_load()
    print(f"machine at start: {describe(start_load)}", flush=True)
    cache = args.out / "cache"
    rows, exports = [], {}
    for name in args.only.split(","):
        recipe = RECIPES[name]
        copy = args.out / name
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(source, copy)
        smooth = DEFAULT_ALPHA if recipe["smooth"] == "default" else None
        opts = QuantizeOptions(
            precision="int8",
            auto=recipe["auto"],
            calib=PairSource(None, "train", args.pairs),
            eval=PairSource(None, "val", args.pairs, seed=1),
            search=PairSource(None, "val", args.search_pairs, seed=2),
            cache_dir=cache,
            latency_runs=0,
            threads=args.threads,
            int8=Int8Options(smooth=smooth),
        )
        began = time.perf_counter()
        try:
            result = run_quantize(copy, opts, log=lambda *_: None)
        except QuantizeFailed as failed:  # below the gates: reported, and not timed
            result = failed.result
        seconds = time.perf_counter() - began
        share = result.plan.int8_flop_share if result.plan else 1.0
        for report in result.layouts:
            rows.append(
                {
                    "recipe": name,
                    "layout": report.layout,
                    "mask_iou": report.mask_iou,
                    "miou_change_points": report.miou_change * 100,
                    "logits_max_abs": report.logits_max_abs,
                    "logits_mean_abs": report.logits_mean_abs,
                    "int8_flop_share": share,
                    "ok": report.ok,
                    "quantize_s": seconds,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        if result.written:
            exports[name] = copy

    pair = next(iter(PairSource(None, "val", 1, seed=1)))
    pairs = [(pair.image, pair.text)]
    cells = []
    for layout in ("fused", "split"):
        cells.append(_Cell(f"fp32 {layout}", source, layout, "fp32", args.threads, pairs))
        for name, export in exports.items():
            cells.append(_Cell(f"{name} {layout}", export, layout, "int8", args.threads, pairs))
    for cell in cells:
        cell.time(1, 3)  # warm-up
    times = interleave(cells, [1], args.rounds, lambda cell, batch: args.runs)
    latency = {}
    for cell in cells:
        layout = cell.label.split()[-1]
        base = times[f"fp32 {layout}"]
        latency[cell.label] = latency_summary(times[cell.label], base, [1], 0.1)["1"]
    end_load = machine_load()
    print(f"machine at end: {describe(end_load)}")
    print(f"{'cell':<24} {'p50 ms':>8} {'vs fp32':>8} {'spread':>7}")
    for label, entry in latency.items():
        speed = entry.get("speedup", {})
        print(
            f"{label:<24} {entry['p50']:8.2f} {speed.get('median', float('nan')):7.2f}x "
            f"{entry['round_spread']:6.1%}"
        )
    report = {
        "load_start": start_load,
        "load_end": end_load,
        "accuracy": rows,
        "latency": latency,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    (args.out / "int8_recipes.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
