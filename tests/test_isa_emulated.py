"""The other x86 ISA family, exercised wherever the suite runs (the portable-precision rule).

On an AVX512-VNNI machine the bundled model's INT8 graphs, quantized and verified here, are
loaded under ``qemu-x86_64 -cpu Haswell`` (AVX2, no VNNI, no BF16: Debian's ``qemu-user``
reports that CPU's CPUID, so ONNX Runtime and OpenVINO pick their AVX2 kernels):

- the default (7-bit second operands) graphs run there as verified, and their stored pairs
  give the recorded agreement within ``REVERIFY_TOLERANCE`` in both runtimes;
- 8-bit graphs verified on VNNI are re-verified there and refused, with the measured numbers.

On an AVX2-only machine the rest of the suite runs natively on that family; what cannot run
there is the VNNI side (qemu 7.2's TCG has no AVX512), so this module skips with that reason.
``DIT_REQUIRE_QEMU=1`` (set by .ci/run) turns a missing qemu-x86_64 into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dit_deploy.runtime.cpu_numerics import REVERIFY_TOLERANCE, this_machine

QEMU = shutil.which("qemu-x86_64")
HERE = this_machine()

PROBE = r"""
import json, sys
from dit_deploy.errors import DITError
from dit_deploy.runtime import Predictor, read_manifest
from dit_deploy.runtime.cpu_numerics import this_machine
from dit_deploy.runtime.verified_on import agreement, read_pairs
out = {"family": this_machine().family, "cells": {}}
for export in sys.argv[1:]:
    m = read_manifest(export)
    pairs = read_pairs(export, m)
    for backend in ("onnxruntime", "openvino"):
        cell = {}
        try:
            with Predictor(export, backend=backend, precision="int8", layout="fused") as p:
                cell["verdict"] = p.verified_here
                logits = p.low_res_logits(pairs.feeds)
                cell["agreement"] = agreement(logits, pairs.reference["fused"], m.mask_threshold)
        except DITError as exc:
            cell["error"] = str(exc)
        out["cells"][f"{export}|{backend}"] = cell
print("RESULT " + json.dumps(out))
"""


def _skip_reason() -> str | None:
    if not HERE.is_x86:
        return f"qemu-x86_64 -cpu Haswell emulates x86; this machine is {HERE.arch}"
    if HERE.family not in ("x86-avx512-vnni", "x86-amx", "x86-avx-vnni", "x86-avx512"):
        return (
            f"this machine is {HERE.family}: the suite runs natively on the AVX2 family here, and "
            "the VNNI family cannot be emulated (qemu 7.2 has no AVX512)"
        )
    if QEMU is None:
        reason = "qemu-x86_64 not found (apt-get install qemu-user; scripts/install.sh does)"
        if os.environ.get("DIT_REQUIRE_QEMU") == "1":
            pytest.fail(f"DIT_REQUIRE_QEMU=1 but {reason}")
        return reason
    return None


@pytest.fixture(scope="module")
def bundled_int8(tmp_path_factory) -> dict[int, Path]:
    """The bundled model exported, and INT8-quantized here with 7- and 8-bit weights."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("torch")
    from dit_deploy.exporters.onnx_export import export_pretrained
    from dit_deploy.precision.int8 import Int8Options
    from dit_deploy.precision.pipeline import QuantizeOptions, run_quantize
    from dit_deploy.precision.samples import PairSource
    from dit_deploy.precision.verify import Floor

    root = tmp_path_factory.mktemp("isa")
    base = root / "fp32"
    export_pretrained("dit-tiny-synthetic", base, log=lambda *_: None)
    out = {}
    for bits in (7, 8):
        out[bits] = root / f"w{bits}"
        shutil.copytree(base, out[bits])
        opts = QuantizeOptions(
            "int8",
            calib=PairSource(None, "train", 16),
            eval=PairSource(None, "val", 16, seed=1),
            cache_dir=root / "cache",
            latency_runs=0,
            floor=Floor(0.5, 0.5),
            int8=Int8Options(weight_bits=bits),
        )
        run_quantize(out[bits], opts, log=lambda *_: None)
    return out


def _probe(exports: dict[int, Path], cache: Path, emulate: bool) -> dict:
    """What the runtime does with both exports, natively or on an emulated AVX2 CPU (with an
    OpenVINO model cache of its own: blobs compiled for one ISA are not the other's)."""
    cmd = [sys.executable, "-c", PROBE, *map(str, exports.values())]
    if emulate:
        cmd = [QEMU, "-cpu", "Haswell", *cmd]
    env = {**os.environ, "DIT_DEPLOY_OPENVINO_CACHE": str(cache)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-2000:]
    return json.loads(lines[0][len("RESULT ") :])


@pytest.fixture(scope="module")
def under_haswell(bundled_int8, tmp_path_factory) -> dict:
    return _probe(bundled_int8, tmp_path_factory.mktemp("ov-emulated"), emulate=True)


@pytest.fixture(scope="module")
def native(bundled_int8, tmp_path_factory) -> dict:
    return _probe(bundled_int8, tmp_path_factory.mktemp("ov-native"), emulate=False)


def _recorded(export: Path) -> float:
    from dit_deploy.runtime import read_manifest

    record = read_manifest(export).verified["int8"]["on"][0]
    return record["stored_pairs_agreement"]["fused"]


def test_emulated_cpu_is_avx2(under_haswell):
    assert under_haswell["family"] == "x86-avx2"


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_portable_int8_runs_as_verified_on_avx2(bundled_int8, under_haswell, native, backend):
    key = f"{bundled_int8[7]}|{backend}"
    cell = under_haswell["cells"][key]
    assert cell.get("verdict") == "run", cell
    # the same masks on both ISA families (ONNX Runtime: the same logits), and the recorded
    # verification (made in ONNX Runtime) holds within the re-verification tolerance
    assert abs(cell["agreement"] - native["cells"][key]["agreement"]) <= 0.005
    assert abs(cell["agreement"] - _recorded(bundled_int8[7])) <= REVERIFY_TOLERANCE
    if backend == "onnxruntime":
        assert cell["agreement"] == pytest.approx(_recorded(bundled_int8[7]), abs=1e-3)


def test_eight_bit_int8_verified_on_vnni_is_refused_on_avx2(bundled_int8, under_haswell):
    """ONNX Runtime saturates: the stored pairs fall below the recorded agreement."""
    cell = under_haswell["cells"][f"{bundled_int8[8]}|onnxruntime"]
    assert "error" in cell, cell
    assert "computes them as x86-int8-saturating" in cell["error"]
    assert "dit-deploy quantize" in cell["error"]


def test_eight_bit_int8_is_never_run_unchecked_on_avx2(bundled_int8, under_haswell):
    """OpenVINO saturates less on these pairs: whatever it gives, the graphs are re-verified
    (accepted only within the tolerance of the record) or refused, never run as verified."""
    cell = under_haswell["cells"][f"{bundled_int8[8]}|openvino"]
    if "error" in cell:
        assert "computes them as x86-int8-saturating" in cell["error"]
    else:
        assert cell["verdict"] == "reverified"
        assert cell["agreement"] >= _recorded(bundled_int8[8]) - REVERIFY_TOLERANCE
