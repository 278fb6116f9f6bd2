"""Where an exported graph's time goes in OpenVINO: its own per-node profile, by node type.

    .venv/bin/python benchmarks/ov_profile.py runs/vit_b/export --precision int8
    .venv/bin/python benchmarks/ov_profile.py EXPORT --graph dit_encoder --calls 10 --json p.json

Compiles one graph of an export as the runtime does (CPU, ``f32`` inference precision for
the fp32/int8 graphs, latency hint, every core unless ``--threads``) with OpenVINO's
``PERF_COUNT``, runs it on synthetic inputs of the graph's own shapes, and prints the time
per node type and kernel (OpenVINO's ``exec_type``: ``brgemm_avx512_i8`` is an INT8 GEMM,
``ref_*`` a reference loop) summed over the calls, largest first, with the wall time
measured without profiling beside it. The profile's sum exceeds the wall time a little
(per-node timers); the shares are what to read. docs/benchmarks.md, "Where the ViT-B INT8
time goes", is this script's table.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def synthetic_feeds(compiled) -> dict[str, np.ndarray]:
    """Inputs of the compiled graph's shapes (dynamic dims as 1): token ids a word piece,
    masks ones, images uniform noise."""
    feeds = {}
    for port in compiled.inputs:
        shape = [d.get_length() if d.is_static else 1 for d in port.get_partial_shape()]
        name, kind = port.get_any_name(), port.get_element_type().get_type_name()
        if kind in ("i64", "i32"):
            value = 1000 if "ids" in name else 1
            feeds[name] = np.full(shape, value, np.int64 if kind == "i64" else np.int32)
        else:
            feeds[name] = np.random.default_rng(0).random(shape, dtype=np.float32)
    return feeds


def profile(path: Path, threads: int, calls: int) -> dict:
    """{"wall_ms": median wall per call unprofiled, "rows": [{type, kernel, ms, nodes}]}."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_NUM_THREADS": threads}  # fmt: skip
    plain = core.compile_model(str(path), "CPU", config)
    counted = core.compile_model(str(path), "CPU", {**config, "PERF_COUNT": True})
    feeds = synthetic_feeds(plain)
    walls = []
    for compiled in (plain, counted):
        compiled.create_infer_request().infer(feeds)  # warm-up: first-call allocations
    request = plain.create_infer_request()
    for _ in range(calls):
        start = time.perf_counter()
        request.infer(feeds)
        walls.append((time.perf_counter() - start) * 1e3)
    request = counted.create_infer_request()
    spent: collections.Counter = collections.Counter()
    nodes: collections.Counter = collections.Counter()
    for _ in range(calls):
        request.infer(feeds)
        for info in request.profiling_info:
            key = (info.node_type, info.exec_type)
            spent[key] += info.real_time.total_seconds() * 1e3
            nodes[key] += 1
    rows = [
        {"type": t, "kernel": k, "ms": ms / calls, "nodes": nodes[(t, k)] // calls}
        for (t, k), ms in spent.most_common()
    ]
    return {"wall_ms": statistics.median(walls), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("export", type=Path, help="an export directory (manifest.json)")
    p.add_argument("--graph", default="dit_fused", help="graph role (%(default)s)")
    p.add_argument("--precision", default="int8", help="fp32 or int8 (%(default)s)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="(all cores)")
    p.add_argument("--calls", type=int, default=5, help="profiled calls (%(default)s)")
    p.add_argument("--top", type=int, default=20, help="rows printed (%(default)s)")
    p.add_argument("--json", type=Path, help="also write the table here")
    args = p.parse_args(argv)
    if args.precision not in ("fp32", "int8"):
        p.error("--precision: fp32 or int8 (bf16 is the fp32 graph with another hint)")
    if min(args.threads, args.calls, args.top) < 1:
        p.error("--threads, --calls and --top take positive numbers")
    suffix = "" if args.precision == "fp32" else f".{args.precision}"
    path = args.export / f"{args.graph}{suffix}.onnx"
    if not path.is_file():
        p.error(f"{path} not found: export the layout / quantize to {args.precision} first")
    if args.json and not os.access(args.json.parent if str(args.json.parent) else ".", os.W_OK):
        p.error(f"--json {args.json}: its directory does not exist or is not writable")
    try:
        result = profile(path, args.threads, args.calls)
    except RuntimeError as exc:  # OpenVINO: a corrupt graph or an op it cannot compile
        p.error(f"OpenVINO cannot run {path}: {str(exc).strip().splitlines()[-1]}")
    total = sum(r["ms"] for r in result["rows"])
    print(f"{path}: wall {result['wall_ms']:.1f} ms (median of {args.calls}, unprofiled); "
          f"profiled node times sum to {total:.1f} ms")  # fmt: skip
    print(f"{'ms':>8} {'share':>6} {'nodes':>5}  node type (kernel)")
    for r in result["rows"][: args.top]:
        print(f"{r['ms']:8.2f} {r['ms'] / total:6.1%} {r['nodes']:5d}  {r['type']} ({r['kernel']})")
    if args.json:
        from dit_deploy.atomic import write_text_atomic

        try:
            write_text_atomic(args.json, json.dumps({"graph": str(path), **result}, indent=1))
        except OSError as exc:
            p.error(f"--json {args.json}: cannot write it ({exc.strerror or exc})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
