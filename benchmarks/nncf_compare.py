"""Our INT8 graph vs NNCF's, side by side: the same FP32 ONNX, the same calibration pairs.

    pip install nncf                                   # not a dependency of dit-deploy
    .venv/bin/python benchmarks/nncf_compare.py        # bundled model, main-job style data
    .venv/bin/python benchmarks/nncf_compare.py --export runs/vit_b/export --data runs/vit_b/data

What an OpenVINO user would do instead of ``dit-deploy quantize``: read the FP32 fused graph
into OpenVINO, ``nncf.quantize`` it (``ModelType.TRANSFORMER``; with NNCF's SmoothQuant and
without) on the calibration pairs ``quantize`` uses, and compile it. Against our INT8 graph
(``quantize --precision int8``, plain: the default smoothing choice and 7-bit weights; and
the export's own INT8, e.g. the main job's ``--auto`` plan, when it has one) in OpenVINO and
ONNX Runtime, on held-out pairs:

- mask agreement with FP32 (low-res logits thresholded after upsampling, pooled) and mIoU
  against the ground truth, for every candidate on the same pairs;
- latency of one fused batch-1 call, every candidate timed in interleaved rounds (median of
  the per-round medians), with the load at the start and the CPU's ISA family;
- the time each quantization took.

Prints a Markdown table (the one in docs/benchmarks.md) and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
Run = Callable[[dict[str, np.ndarray]], np.ndarray]  # feeds -> (B, 1, h, w) low-res logits


def _pairs(data: Path, split: str, n: int, seed: int):
    from dit_deploy.precision.samples import PairSource

    return PairSource(data, split, n, seed=seed)


def _our_int8(export: Path, data: Path, calib: int, work: Path) -> tuple[Path, float]:
    """Plain ``quantize --precision int8`` (the defaults: smoothing choice, 7-bit weights) of
    a copy of the export; returns its INT8 fused graph and the seconds quantize took."""
    from dit_deploy.precision.pipeline import QuantizeOptions, run_quantize
    from dit_deploy.precision.verify import Floor
    from dit_deploy.runtime import Export

    out = work / "ours"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(export, out)
    opts = QuantizeOptions(
        "int8",
        calib=_pairs(data, "train", calib, 0),
        eval=_pairs(data, "val", 8, 1),
        floor=Floor(0.0, 1.0),  # measured below, not gated
        latency_runs=0,
    )
    start = time.perf_counter()
    run_quantize(out, opts, log=lambda *_: None)
    return Export.open(out).graph_path("dit_fused", "int8"), time.perf_counter() - start


def _nncf_int8(fp32: Path, calib_feeds: list[dict[str, np.ndarray]], smooth: bool):
    """``nncf.quantize`` of the FP32 graph read by OpenVINO (TRANSFORMER; SmoothQuant on at
    NNCF's default alpha for MatMul, or off)."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    model = ov.Core().read_model(str(fp32))
    alphas = AdvancedSmoothQuantParameters() if smooth else AdvancedSmoothQuantParameters(-1, -1)
    start = time.perf_counter()
    quantized = nncf.quantize(
        model,
        nncf.Dataset(calib_feeds),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(calib_feeds),
        advanced_parameters=AdvancedQuantizationParameters(smooth_quant_alphas=alphas),
    )
    return quantized, time.perf_counter() - start


def _openvino(model, threads: int) -> Run:
    import openvino as ov

    core = ov.Core()
    if not isinstance(model, ov.Model):
        model = core.read_model(str(model))
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    compiled = core.compile_model(model, "CPU", config)
    request, out = compiled.create_infer_request(), compiled.output("low_res_logits")
    return lambda feeds: np.asarray(request.infer(feeds)[out]).copy()


def _onnxruntime(path: Path, threads: int) -> Run:
    from dit_deploy.runtime.backends import open_backend

    backend = open_backend("onnxruntime", path, threads=threads)
    return lambda feeds: backend.run(feeds)["low_res_logits"]


def accuracy(cells: dict[str, Run], fp32: Run, prepare, source, threshold: float) -> dict:
    """Per cell: mask agreement with FP32 and mIoU against the ground truth, same pairs."""
    from dit_deploy.metrics import RISMetrics, logits_agreement
    from dit_deploy.postprocess import postprocess_batch

    logits: dict[str, list[np.ndarray]] = {name: [] for name in ("fp32", *cells)}
    metrics = {name: RISMetrics() for name in logits}
    for pair in source:
        feeds, boxes = prepare([pair])
        for name, run in {"fp32": fp32, **cells}.items():
            out = run(feeds)
            logits[name].append(out)
            [mask] = postprocess_batch(out, boxes, threshold)
            metrics[name].update(mask.mask, pair.mask)
    reference = np.concatenate(logits["fp32"])
    return {
        name: {
            "mask_agreement": logits_agreement(np.concatenate(v), reference, threshold),
            "mIoU": metrics[name].compute()["mIoU"],
        }
        for name, v in logits.items()
    }


def latency(cells: dict[str, Run], feeds, rounds: int, calls: int) -> dict[str, float]:
    """Median ms of one batch-1 call per cell, timed in interleaved rounds."""
    for run in cells.values():
        for _ in range(3):
            run(feeds)
    times: dict[str, list[float]] = {name: [] for name in cells}
    for _ in range(rounds):
        for name, run in cells.items():
            samples = []
            for _ in range(calls):
                start = time.perf_counter()
                run(feeds)
                samples.append(time.perf_counter() - start)
            times[name].append(float(np.median(samples)) * 1e3)
    return {name: float(np.median(v)) for name, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--export", type=Path, help="an export (default: the bundled model's)")
    p.add_argument("--data", type=Path, help="dataset (default: generated synthetic scenes)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "nncf_compare", help="work dir")
    p.add_argument("--calib", type=int, default=64, help="calibration pairs (quantize's default)")
    p.add_argument("--pairs", type=int, default=48, help="held-out pairs for accuracy")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rounds", type=int, default=10, help="interleaved latency rounds")
    p.add_argument("--calls", type=int, default=20, help="calls per cell per round")
    p.add_argument(
        "--skip-ours",
        action="store_true",
        help="no plain INT8 of ours (where quantize takes too long, e.g. ViT-B today)",
    )
    args = p.parse_args(argv)
    if min(args.calib, args.pairs, args.threads, args.rounds, args.calls) < 1:
        p.error("--calib, --pairs, --threads, --rounds and --calls take positive numbers")
    if args.export is not None and not (args.export / "manifest.json").is_file():
        p.error(f"--export {args.export}: not an export directory (no manifest.json)")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        p.error(f"--out {args.out}: cannot create it ({exc.strerror})")
    try:
        import nncf  # noqa: F401
    except ImportError:
        p.error("needs NNCF: pip install nncf (not a dependency of dit-deploy)")
    from dit_deploy.atomic import write_text_atomic
    from dit_deploy.bench.machine import describe, machine_load
    from dit_deploy.precision.chain import PairInputs
    from dit_deploy.runtime import Export
    from dit_deploy.runtime.cpu_numerics import this_machine

    load = machine_load()
    if args.export is None:
        from dit_deploy.exporters.onnx_export import export_pretrained

        args.export = args.out / "fp32"
        export_pretrained("dit-tiny-synthetic", args.export, log=lambda *_: None)
    export = Export.open(args.export)
    if args.data is None:
        from dit_deploy.data.synthetic import generate

        args.data = args.out / "data"
        if not (args.data / "synthetic").exists():
            size = export.manifest.input_size
            generate(args.data, n_train=args.calib, n_val=args.pairs, seed=2024, size=size)
    prepare = PairInputs(export.path, export.manifest)
    calib = [prepare([pair])[0] for pair in _pairs(args.data, "train", args.calib, 0)]
    fp32_path = export.graph_path("dit_fused")
    ours, ours_s = (
        (None, None) if args.skip_ours else _our_int8(export.path, args.data, args.calib, args.out)
    )
    nncf_sq, nncf_sq_s = _nncf_int8(fp32_path, calib, smooth=True)
    nncf_plain, nncf_plain_s = _nncf_int8(fp32_path, calib, smooth=False)
    t = args.threads
    cells = {"fp32 (openvino)": _openvino(fp32_path, t)}
    if ours is not None:
        cells["ours int8 (onnxruntime)"] = _onnxruntime(ours, t)
        cells["ours int8 (openvino)"] = _openvino(ours, t)
    if "int8" in export.precisions:  # the export's own (the main job's: --auto's plan)
        own = export.graph_path("dit_fused", "int8")
        cells["export's int8 (onnxruntime)"] = _onnxruntime(own, t)
        cells["export's int8 (openvino)"] = _openvino(own, t)
    cells |= {
        "nncf int8, SmoothQuant (openvino)": _openvino(nncf_sq, t),
        "nncf int8, no SmoothQuant (openvino)": _openvino(nncf_plain, t),
    }
    fp32 = _onnxruntime(fp32_path, t)
    source = _pairs(args.data, "val", args.pairs, 1)
    acc = accuracy(cells, fp32, prepare, source, export.manifest.mask_threshold)
    feeds, _ = prepare([next(iter(_pairs(args.data, "val", 1, 1)))])
    lat = latency({"fp32 (onnxruntime)": fp32, **cells}, feeds, args.rounds, args.calls)
    report = {
        "machine": this_machine().describe(),
        "load_at_start": describe(load),
        "export": str(export.path),
        "threads": t,
        "calibration_pairs": args.calib,
        "eval_pairs": args.pairs,
        "quantize_s": {"ours": ours_s, "nncf SmoothQuant": nncf_sq_s, "nncf": nncf_plain_s},
        "accuracy": acc,
        "latency_ms": lat,
    }
    write_text_atomic(args.out / "nncf_compare.json", json.dumps(report, indent=2) + "\n")
    print(f"machine: {report['machine']}\n{report['load_at_start']}")
    print(f"\n| fused, batch 1, {t} threads | ms | vs FP32 (OpenVINO) | mask agr. | mIoU |")
    print("|---|---|---|---|---|")
    base = lat["fp32 (openvino)"]
    for name, ms in lat.items():
        a = acc.get(name, acc["fp32"])  # fp32 (onnxruntime) is the reference itself
        print(
            f"| {name} | {ms:.2f} | {base / ms:.2f}x | {a['mask_agreement']:.4f} | "
            f"{100 * a['mIoU']:.2f} |"
        )
    print(
        "\nquantize s: "
        + json.dumps({k: v and round(v, 1) for k, v in report["quantize_s"].items()})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
