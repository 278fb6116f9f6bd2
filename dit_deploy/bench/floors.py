"""Compute floors: the least time this CPU needs for the model's GEMM work, per precision.

A cell's distance to its floor (``x floor`` = its p50 / the floor) says how much of its time
is not the model's matrix products at the best rate this machine reaches. Two rates are
recorded per precision:

- **measured** (the floor): one large GEMM of the model's shape class run by the runtimes
  here (ONNX Runtime, and OpenVINO where installed; the faster counts), FP32 and INT8 (Q/DQ,
  7-bit weights as our INT8 graphs have), BF16 where the CPU has BF16 units;
- **nominal**: the ISA's FLOP per cycle per core x the threads x the CPU's reported clock,
  for reading the measured one (a VM's reported clock may not be the real one).

Nothing assumes VNNI: an AVX2-only CPU gets its own nominal INT8 rate (``vpmaddubsw`` +
``vpmaddwd`` + ``vpaddd`` per 32 products) and its own measured one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..graph_flops import graph_gflop

# the GEMM measured: a ViT MLP's shape class (tokens x 768 -> 3072), large enough that the
# kernels reach their steady rate, small enough to measure in a second per precision
GEMM = (256, 768, 3072)
MEASURE_S = 0.4  # timed runs per (runtime, precision), after one warm-up
# precisions whose floor is a measured GEMM rate; a cell's precision -> its floor's precision
# (CPUs have no FP16 arithmetic: ONNX Runtime computes FP16 graphs' products in FP32)
FLOOR_OF = {"fp32": "fp32", "fp16": "fp32", "int8": "int8", "bf16": "bf16"}


def nominal_gflops(machine, threads: int, mhz: float | None) -> dict[str, float | None]:
    """Nominal GFLOP/s per precision: FLOP per cycle per core (the ISA's widest units) x
    ``threads`` x the clock; None where the CPU has no such units (BF16) or no clock is known.

    Per core and cycle (two vector pipes): FP32 FMA = vector bits / 8 (256-bit: 32);
    INT8 with VNNI = bits / 2 (one ``vpdpbusd`` does bits/8 products); INT8 without VNNI =
    two thirds of FP32 x 2 (three instructions per bits/8 products, in 16 bits); BF16 =
    bits / 4 (``vdpbf16ps``); AMX tiles: 1024 INT8 / 512 BF16 ops. AMD's AVX-512 before
    Zen 5 runs 512-bit operations as two 256-bit halves, so its vectors count as 256 bits.
    The clock is the one the kernel reports (a VM reports the base clock; boost runs above
    it, so the measured rate can exceed the nominal one).
    """
    if not mhz or not machine.is_x86:
        return {"fp32": None, "int8": None, "bf16": None}
    vendor, family = cpu_vendor_family()
    # AMD before Zen 5 (family 0x1a) runs AVX-512 as two 256-bit halves
    half = vendor == "AuthenticAMD" and family < 0x1A
    bits = 512 if "avx512f" in machine.flags and not half else 256
    fp32 = bits / 8
    if "amx_int8" in machine.flags:
        int8 = 1024.0
    elif {"avx512_vnni", "avx_vnni"} & machine.flags:
        int8 = bits / 2
    else:
        int8 = 2 * fp32 * 2 / 3
    bf16 = 512.0 if "amx_bf16" in machine.flags else bits / 4 if machine.has_bf16_units else None
    scale = threads * mhz / 1e3
    return {
        "fp32": fp32 * scale,
        "int8": int8 * scale,
        "bf16": None if bf16 is None else bf16 * scale,
    }


def cpu_vendor_family(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str, int]:
    """(``vendor_id``, ``cpu family``) of the first CPU; ("", 0) where not reported."""
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        return "", 0
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    family = fields.get("cpu family", "0")
    return fields.get("vendor_id", ""), int(family) if family.isdigit() else 0


def cpu_mhz(cpuinfo: str | Path = "/proc/cpuinfo") -> float | None:
    """The mean clock the kernel reports (``cpu MHz``); None where it does not."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    values = [float(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
    return sum(values) / len(values) if values else None


def _gemm_graph(precision: str) -> bytes:
    """A one-GEMM ONNX graph: x (M, K) @ W (K, N); INT8 as our graphs have it (Q/DQ
    activations, symmetric 7-bit per-channel weights)."""
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = GEMM
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
    if precision != "int8":
        w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        inits = [w]
    else:
        q = rng.integers(-63, 64, (k, n)).astype(np.int8)
        inits = [
            numpy_helper.from_array(q, "wq"),
            numpy_helper.from_array(np.full(n, 0.01, np.float32), "ws"),
            numpy_helper.from_array(np.zeros(n, np.int8), "wz"),
            numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
            numpy_helper.from_array(np.array(0, np.int8), "xz"),
        ]
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
            helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=1),
            helper.make_node("MatMul", ["xd", "wd"], ["y"]),
        ]
    graph = helper.make_graph(nodes, "gemm", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _rate(run: Callable[[], object]) -> float:
    """GFLOP/s of the GEMM: the best of the runs within ``MEASURE_S`` after a warm-up."""
    m, k, n = GEMM
    run()
    best, deadline = float("inf"), time.perf_counter() + MEASURE_S
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best / 1e9


def _ort(model: bytes, threads: int) -> Callable[[], object]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal(GEMM[:2]).astype(np.float32)
    return lambda: session.run(None, {"x": x})


def _openvino(model: bytes, threads: int, hint: str) -> Callable[[], object]:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(model),
        "CPU",
        {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint},
    )
    request = compiled.create_infer_request()
    x = np.random.default_rng(1).standard_normal(GEMM[:2]).astype(np.float32)
    return lambda: request.infer({0: x})


def measured_gflops(threads: int, bf16_units: bool) -> dict[str, dict[str, Any]]:
    """Precision -> {"gflops", "by"}: the fastest runtime here on the GEMM (a runtime that is
    not installed or fails is left out; a precision none can run is absent)."""
    import importlib.util

    runners: list[tuple[str, str, Callable[[], Callable[[], object]]]] = []
    if importlib.util.find_spec("onnxruntime"):
        for p in ("fp32", "int8"):
            runners.append((p, "onnxruntime", lambda p=p: _ort(_gemm_graph(p), threads)))
    if importlib.util.find_spec("openvino"):
        for p in ("fp32", "int8"):
            runners.append((p, "openvino", lambda p=p: _openvino(_gemm_graph(p), threads, "f32")))
        if bf16_units:
            runners.append(
                ("bf16", "openvino", lambda: _openvino(_gemm_graph("fp32"), threads, "bf16"))
            )
    best: dict[str, dict[str, Any]] = {}
    for precision, runtime, make in runners:
        try:
            rate = _rate(make())
        except Exception:  # noqa: BLE001 - a runtime that cannot run it has no floor to give
            continue
        if rate > best.get(precision, {}).get("gflops", 0.0):
            best[precision] = {"gflops": float(f"{rate:.4g}"), "by": runtime}
    return best


def compute_floors(
    graphs: list[Path], batches: list[int], threads: int | None, machine=None
) -> dict[str, Any]:
    """The report's ``floors`` for the FP32 ``graphs`` of one layout: ISA family, GFLOP per
    batch, measured and nominal rates, and the floor in ms per precision and batch.
    ``{"reason": ...}`` where it cannot be computed."""
    import importlib.util
    import os

    from ..runtime.cpu_numerics import this_machine

    if importlib.util.find_spec("onnx") is None:
        return {"reason": "onnx is not installed (pip install 'dit-deploy[export]')"}
    machine = machine or this_machine()
    threads = threads or os.cpu_count() or 1
    gflop = {str(b): round(sum(graph_gflop(g, b) for g in graphs), 4) for b in batches}
    measured = measured_gflops(threads, machine.has_bf16_units)
    nominal = nominal_gflops(machine, threads, cpu_mhz())
    floor_ms = {
        p: {b: round(1e3 * g / rate["gflops"], 3) for b, g in gflop.items()}
        for p, rate in measured.items()
    }
    return {
        "isa": machine.family,
        "graph": " + ".join(g.name for g in graphs),
        "threads": threads,
        "gemm": list(GEMM),
        "gflop": gflop,
        "measured_gflops": measured,
        "nominal_gflops": {p: None if v is None else round(v, 1) for p, v in nominal.items()},
        "floor_ms": floor_ms,
    }


def add_distances(cells: list[dict[str, Any]], floors: dict[str, Any]) -> None:
    """Each CPU cell's ``x_floor`` per batch: its p50 over its precision's floor."""
    table = floors.get("floor_ms", {})
    for cell in cells:
        if cell.get("device", "cpu") != "cpu":
            continue
        floor = table.get(FLOOR_OF.get(cell.get("precision", ""), ""), {})
        for batch, lat in cell.get("result", {}).get("latency", {}).items():
            if isinstance(lat, dict) and lat.get("p50") and floor.get(batch):
                lat["x_floor"] = round(lat["p50"] / floor[batch], 2)


def describe(floors: dict[str, Any]) -> str:
    """One line for the report: the ISA family, the model's work and each floor."""
    if "reason" in floors:
        return f"Floors: not computed ({floors['reason']})."
    b = next(iter(floors["gflop"]))
    parts = []
    for p, rate in floors["measured_gflops"].items():
        nominal = floors["nominal_gflops"].get(p)
        parts.append(
            f"{p} {floors['floor_ms'][p][b]:.1f} ms ({rate['gflops']:.0f} GFLOP/s by "
            f"{rate['by']}" + (f", nominal {nominal:.0f}" if nominal else "") + ")"
        )
    missing = [p for p in ("fp32", "int8", "bf16") if p not in floors["measured_gflops"]]
    return (
        f"Floors ({floors['isa']}, {floors['threads']} threads, batch {b}: "
        f"{floors['gflop'][b]:.2f} GFLOP of {floors['graph']}): "
        + "; ".join(parts)
        + (f"; none for {', '.join(missing)} here" if missing else "")
        + ". x floor = p50 / the floor of the cell's precision."
    )
