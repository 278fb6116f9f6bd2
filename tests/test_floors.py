"""Compute floors: the model's GEMM work counted from the graph, rates per ISA, distances."""

from __future__ import annotations

import numpy as np
import pytest

from dit_deploy.bench import floors
from dit_deploy.runtime.cpu_numerics import Machine

onnx = pytest.importorskip("onnx")


def _graph(tmp_path):
    """x (batch, 4, 8) @ W (8, 16), then a 3x3 conv (2 -> 5 channels) on (batch, 2, 6, 6)."""
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8])
    img = helper.make_tensor_value_info("img", TensorProto.FLOAT, ["batch", 2, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    inits = [
        numpy_helper.from_array(np.ones((8, 16), np.float32), "w"),
        numpy_helper.from_array(np.ones((5, 2, 3, 3), np.float32), "k"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Conv", ["img", "k"], ["z"], pads=[1, 1, 1, 1]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x, img], [y, z], inits),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    path = tmp_path / "g.onnx"
    onnx.save(model, str(path))
    return path


def test_flops_are_counted_from_the_graph_at_each_batch(tmp_path):
    path = _graph(tmp_path)
    matmul = 4 * 16 * 8  # output elements x K
    conv = 5 * 6 * 6 * (2 * 3 * 3)  # output elements x (C_in x kh x kw)
    for batch in (1, 3):
        assert floors.graph_gflop(path, batch) == pytest.approx(2 * batch * (matmul + conv) / 1e9)


def test_the_bundled_models_work_is_linear_in_the_batch(tiny_export):
    one = floors.graph_gflop(tiny_export / "dit_fused.onnx", 1)
    split = sum(
        floors.graph_gflop(tiny_export / f"{r}.onnx", 1)
        for r in ("text_encoder", "dit_encoder", "mask_decoder")
    )
    assert one > 0.01 and split == pytest.approx(one, rel=0.01)
    assert floors.graph_gflop(tiny_export / "dit_fused.onnx", 4) == pytest.approx(4 * one)


@pytest.mark.parametrize(
    ("flags", "vendor", "family", "fp32", "int8", "bf16"),
    [
        # per core and cycle: AVX2 FMA 32; INT8 without VNNI two thirds of 2 x 32; no BF16
        ({"avx2", "fma"}, "AuthenticAMD", 0x19, 32, 128 / 3, None),
        # Zen 4: AVX-512 in 256-bit halves
        ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, "AuthenticAMD", 0x19, 32, 128, 64),
        # Zen 5 and Intel: full 512-bit units
        ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, "AuthenticAMD", 0x1A, 64, 256, 128),
        (
            {"avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_bf16"},
            "GenuineIntel",
            6,
            64,
            1024,
            512,
        ),
    ],  # fmt: skip
)
def test_nominal_rates_follow_the_isa(monkeypatch, flags, vendor, family, fp32, int8, bf16):
    monkeypatch.setattr(floors, "cpu_vendor_family", lambda: (vendor, family))
    machine = Machine.of("x86_64", flags, "cpu")
    rates = floors.nominal_gflops(machine, threads=2, mhz=1000.0)  # 2 cores x 1 GHz
    assert rates["fp32"] == pytest.approx(2 * fp32)
    assert rates["int8"] == pytest.approx(2 * int8)
    assert rates["bf16"] == (None if bf16 is None else pytest.approx(2 * bf16))
    assert floors.nominal_gflops(machine, 2, None) == {"fp32": None, "int8": None, "bf16": None}


def test_floors_and_distances(tiny_export, monkeypatch):
    monkeypatch.setattr(floors, "MEASURE_S", 0.05)
    got = floors.compute_floors([tiny_export / "dit_fused.onnx"], [1, 2], threads=1)
    assert got["isa"] and set(got["gflop"]) == {"1", "2"}
    assert {"fp32", "int8"} <= set(got["measured_gflops"])
    for precision, rate in got["measured_gflops"].items():
        # > 0 only: under qemu-x86_64 -cpu Haswell the rate is the emulator's (< 1 GFLOP/s)
        assert rate["gflops"] > 0 and rate["by"] in ("onnxruntime", "openvino")
        for batch, ms in got["floor_ms"][precision].items():
            assert ms == pytest.approx(1e3 * got["gflop"][batch] / rate["gflops"], abs=1e-3)
    cells = [
        {"precision": "fp16", "result": {"latency": {"1": {"p50": 10.0}}}},
        {"precision": "int8", "device": "cuda", "result": {"latency": {"1": {"p50": 1.0}}}},
    ]
    floors.add_distances(cells, got)
    fp32_floor = got["floor_ms"]["fp32"]["1"]
    assert cells[0]["result"]["latency"]["1"]["x_floor"] == pytest.approx(10 / fp32_floor, 0.01)
    assert "x_floor" not in cells[1]["result"]["latency"]["1"]  # GPU cells have no CPU floor
    line = floors.describe(got)
    assert got["isa"] in line and "fp32" in line and "GFLOP/s" in line
