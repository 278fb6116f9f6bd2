"""INT8 per x86 ISA: mask agreement and latency of 8-bit and 7-bit weight graphs, one run.

    .venv/bin/python benchmarks/int8_isa.py                  # bundled model, main-job data
    .venv/bin/python benchmarks/int8_isa.py --pairs 48 --rounds 10 --out runs/int8_isa

Quantizes the bundled model's export (the main job's, made if missing) to plain INT8 with
8-bit and with 7-bit second operands (default smoothing, 64 calibration pairs), then measures
on held-out pairs, in ONNX Runtime and OpenVINO, both layouts:

- mask agreement with FP32 on this CPU, and on an AVX2 CPU (``qemu-x86_64 -cpu Haswell``,
  when this machine has AVX512 and qemu-user is installed; emulated, so agreement only);
- latency of the fused graph at batch 1 (FP32, INT8 8-bit, INT8 7-bit), timed in interleaved
  rounds on this CPU (median of per-round medians, with the load at the start).

Prints a Markdown table (the one in docs/benchmarks.md, "INT8 per ISA") and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quantized(work: Path, data: Path, bits: int, calib: int) -> Path:
    from dit_deploy.precision.int8 import Int8Options
    from dit_deploy.precision.pipeline import QuantizeOptions, run_quantize
    from dit_deploy.precision.samples import PairSource
    from dit_deploy.precision.verify import Floor

    out = work / f"w{bits}"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(work / "fp32", out)
    opts = QuantizeOptions(
        "int8",
        calib=PairSource(data, "train", calib),
        eval=PairSource(data, "val", 16, seed=1),
        floor=Floor(0.0, 1.0),  # measured below, not gated
        latency_runs=0,
        int8=Int8Options(weight_bits=bits),
    )
    run_quantize(out, opts, log=lambda *_: None)
    return out


def agreement(exports: list[Path], data: Path, pairs: int) -> dict[str, float]:
    """'w8|onnxruntime|fused' -> pooled mask IoU with FP32 on ``pairs`` held-out pairs."""
    from dit_deploy.precision.chain import PairInputs, chains
    from dit_deploy.precision.samples import PairSource
    from dit_deploy.precision.verify import compare_layout
    from dit_deploy.runtime import read_manifest
    from dit_deploy.runtime.backends import open_backend

    out = {}
    for export in exports:
        m = read_manifest(export)
        prepare, source = PairInputs(export, m), PairSource(data, "val", pairs, seed=1)
        fp32 = chains(m.graph_files(export), 1)
        for backend in ("onnxruntime", "openvino"):

            def opener(role, path, backend=backend):
                return open_backend(backend, path, threads=1, cache_dir=False)

            int8 = chains(m.graph_files(export, "int8"), 1, opener)
            for layout in m.layouts:
                r = compare_layout(
                    layout, fp32[layout], int8[layout], prepare, source, m.mask_threshold
                )
                out[f"{export.name}|{backend}|{layout}"] = r.mask_iou
    return out


def latency(exports: list[Path], data: Path, rounds: int, calls: int) -> dict[str, float]:
    """'fp32|onnxruntime' / 'w7|openvino' -> median ms of a fused batch-1 call, interleaved."""
    import numpy as np

    from dit_deploy.precision.chain import PairInputs
    from dit_deploy.precision.samples import PairSource
    from dit_deploy.runtime import read_manifest
    from dit_deploy.runtime.backends import open_backend

    m = read_manifest(exports[0])
    feeds, _ = PairInputs(exports[0], m)([next(iter(PairSource(data, "val", 1)))])
    cells = {}
    for backend in ("onnxruntime", "openvino"):
        cells[f"fp32|{backend}"] = open_backend(
            backend, exports[0] / m.graphs["dit_fused"].file, threads=1
        )
        for export in exports:
            spec = read_manifest(export).graph("dit_fused", "int8")
            cells[f"{export.name}|{backend}"] = open_backend(backend, export / spec.file, threads=1)
    times: dict[str, list[float]] = {k: [] for k in cells}
    for backend in cells.values():  # warm-up
        for _ in range(3):
            backend.run(feeds)
    for _ in range(rounds):
        for name, backend in cells.items():
            samples = []
            for _ in range(calls):
                start = time.perf_counter()
                backend.run(feeds)
                samples.append(time.perf_counter() - start)
            times[name].append(float(np.median(samples)) * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "int8_isa", help="work directory")
    p.add_argument("--pairs", type=int, default=48, help="held-out pairs for agreement")
    p.add_argument("--calib", type=int, default=64, help="calibration pairs")
    p.add_argument("--rounds", type=int, default=10, help="interleaved latency rounds")
    p.add_argument("--calls", type=int, default=30, help="calls per cell per round")
    p.add_argument("--agreement-only", nargs="+", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.pairs < 1 or args.calib < 1 or args.rounds < 1 or args.calls < 1:
        p.error("--pairs, --calib, --rounds and --calls take positive numbers")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        p.error(f"--out {args.out}: cannot create it ({exc.strerror})")
    data = args.out / "data"
    if args.agreement_only:  # the emulated side: print JSON only
        print("RESULT " + json.dumps(agreement(args.agreement_only, data, args.pairs)))
        return 0
    from dit_deploy.atomic import write_text_atomic
    from dit_deploy.data.synthetic import generate
    from dit_deploy.exporters.onnx_export import export_pretrained
    from dit_deploy.runtime.cpu_numerics import this_machine

    if not (data / "synthetic").exists():
        generate(data, n_train=args.calib, n_val=max(args.pairs, 16), seed=2024, size=128)
    export_pretrained("dit-tiny-synthetic", args.out / "fp32", log=lambda *_: None)
    exports = [_quantized(args.out, data, bits, args.calib) for bits in (8, 7)]
    machine = this_machine()
    report = {"machine": machine.describe(), "load_at_start": os.getloadavg()[0]}
    report["agreement"] = {machine.family: agreement(exports, data, args.pairs)}
    qemu = shutil.which("qemu-x86_64")
    if qemu and machine.is_x86 and machine.family != "x86-avx2":
        cmd = [qemu, "-cpu", "Haswell", sys.executable, __file__, "--out", str(args.out)]
        cmd += ["--pairs", str(args.pairs), "--agreement-only", *map(str, exports)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
        report["agreement"]["x86-avx2 (qemu -cpu Haswell)"] = json.loads(line[7:])
    report["latency_ms"] = latency(exports, data, args.rounds, args.calls)
    write_text_atomic(args.out / "int8_isa.json", json.dumps(report, indent=2) + "\n")
    print(f"machine: {report['machine']}; load at start {report['load_at_start']:.2f}")
    print("| CPU | scheme | ORT split | ORT fused | OpenVINO split | OpenVINO fused |")
    print("|---|---|---|---|---|---|")
    for kind, values in report["agreement"].items():
        for e in exports:
            cells = [
                f"{values[f'{e.name}|{b}|{lay}']:.4f}"
                for b in ("onnxruntime", "openvino")
                for lay in ("split", "fused")
            ]
            print(f"| {kind} | {e.name} | " + " | ".join(cells) + " |")
    lat = report["latency_ms"]
    print("\n| fused, batch 1, 1 thread | FP32 ms | INT8 w8 ms | INT8 w7 ms | w7 / w8 |")
    print("|---|---|---|---|---|")
    for b in ("onnxruntime", "openvino"):
        f, w8, w7 = lat[f"fp32|{b}"], lat[f"w8|{b}"], lat[f"w7|{b}"]
        print(f"| {b} | {f:.2f} | {w8:.2f} | {w7:.2f} | {w7 / w8:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
