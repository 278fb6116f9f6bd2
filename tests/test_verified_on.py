"""Verified here must mean correct there: the verified-on record of a precision, its check at
load (run / re-verify on the stored pairs / refuse), ``dit-deploy verify``, and the INT8
scheme whose numerics do not depend on the x86 ISA."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from dit_deploy.cli import main as cli_main
from dit_deploy.errors import ArtifactError
from dit_deploy.precision.int8 import Int8Options
from dit_deploy.precision.pipeline import QuantizeOptions, run_quantize
from dit_deploy.precision.samples import PairSource
from dit_deploy.precision.verify import Floor
from dit_deploy.runtime import Predictor, read_manifest
from dit_deploy.runtime.cpu_numerics import Machine, numerics, this_machine, verdict
from dit_deploy.runtime.verified_on import (
    PAIRS_FILE,
    PrecisionMismatchError,
    agreement,
    check_here,
    read_pairs,
)

CASES = json.loads((Path(__file__).parent / "fixtures" / "precision_compat_cases.json").read_text())
AVX2 = Machine.of("x86_64", ["avx2", "fma"])


@pytest.fixture(scope="module")
def verified(tiny_export, tmp_path_factory) -> Path:
    """The tiny export with fp16 and (7-bit, the default) int8 graphs, verified here."""
    out = tmp_path_factory.mktemp("verified") / "tiny"
    shutil.copytree(tiny_export, out)
    cache = tmp_path_factory.mktemp("cache")
    for precision in ("fp16", "int8"):
        opts = QuantizeOptions(
            precision,
            calib=PairSource(None, "train", 8) if precision == "int8" else None,
            eval=PairSource(None, "val", 8, seed=1),
            cache_dir=cache,
            latency_runs=0,
        )
        run_quantize(out, opts, log=lambda *_: None)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_manifest(directory: Path, edit) -> None:
    data = json.loads((directory / "manifest.json").read_text())
    edit(data)
    (directory / "manifest.json").write_text(json.dumps(data))


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda c: c["name"])
def test_shared_case_table(case):
    """The same table the C++ runtime is tested with (it refuses where Python re-verifies)."""
    spec = CASES["machines"][case["machine"]]
    machine = Machine.of(spec["arch"], spec["flags"])
    assert machine.family == spec["family"]
    record = CASES["records"][case["record"]] if case["record"] else None
    got = verdict(case["precision"], record, machine, can_reverify=True)
    assert got.action == case["verdict"], got.reason
    assert case.get("says", "") in got.reason
    if case["verdict"] == "reverify":
        assert verdict(case["precision"], record, machine, can_reverify=False).action == "refuse"


def test_cpuinfo_flags_and_cpuid(tmp_path):
    """/proc/cpuinfo gives the flags; where CPUID (numpy) denies what it claims, as under
    qemu -cpu Haswell, CPUID wins and the unconfirmed flags go."""
    from dit_deploy.runtime import cpu_numerics

    info = tmp_path / "cpuinfo"
    info.write_text(
        "model name\t: Test CPU\nflags\t\t: fpu avx2 fma avx512bw avx512_vnni avx512_bf16\n"
    )
    real = cpu_numerics._cpuid_features
    try:
        cpu_numerics._cpuid_features = lambda: {
            "AVX2": True,
            "AVX512BW": True,
            "AVX512VNNI": True,
            "FMA3": True,
            "AVX512F": True,
        }
        agreeing = cpu_numerics.this_machine(info)
        cpu_numerics._cpuid_features = lambda: {"AVX2": True, "FMA3": True}
        emulated = cpu_numerics.this_machine(info)
    finally:
        cpu_numerics._cpuid_features = real
    if not agreeing.is_x86:
        pytest.skip("CPUID cross-check is x86 only; this machine is " + agreeing.arch)
    assert agreeing.family == "x86-avx512-vnni" and agreeing.has_bf16_units
    assert emulated.family == "x86-avx2" and not emulated.has_bf16_units
    assert "CPUID differs" in emulated.cpu


def test_quantize_records_what_it_was_verified_on(verified):
    manifest = read_manifest(verified)
    here = this_machine()
    for precision in ("fp16", "int8"):
        entry = manifest.verified[precision]
        (record,) = entry["on"]
        assert record["numerics"] == numerics(precision, entry["scheme"], here)
        assert record["kernels"] == here.family
        assert record["backend"] == "onnxruntime" and record["backend_version"][0].isdigit()
        assert set(record["stored_pairs_agreement"]) == {"split", "fused"}
        assert record["measured"]["fused"]["pairs"] == 8
    assert manifest.verified["int8"]["scheme"] == {"weight_bits": 7}
    assert manifest.verified["int8"]["on"][0]["numerics"] == "x86-int8-exact"
    pairs = read_pairs(verified, manifest)
    assert pairs.feeds["image"].shape[0] == 8 and set(pairs.reference) == {"split", "fused"}
    # the record's stored-pair agreement is what the graphs give on those pairs here
    with Predictor(verified, precision="int8", layout="fused") as p:
        assert p.verified_here == "run"
        got = agreement(p.low_res_logits(pairs.feeds), pairs.reference["fused"], 0.35)
    assert got == pytest.approx(
        manifest.verified["int8"]["on"][0]["stored_pairs_agreement"]["fused"], abs=1e-6
    )
    assert got > 0.9


def test_int8_second_operands_cannot_overflow_sixteen_bit_pair_sums(verified):
    """No pair of products can overflow vpmaddubsw's int16 (u8 255 x (|w_2k| + |w_2k+1|) <=
    255 x 128 < 32767): weights bounded per adjacent pair along K (in both orders a Conv's K
    is flattened in; most weights then use more than 7 bits), and activation second
    operands scaled to +-64."""
    model = onnx.load(str(verified / "dit_fused.int8.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    weights = activations = wider = 0
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        if dq.input[0] not in inits:
            activations += 1
            continue
        codes = np.abs(inits[dq.input[0]].astype(np.int32))
        weights += 1
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        if node.op_type == "Conv":  # K flattened as (C, kh, kw) and as (kh, kw, C)
            n = len(codes)
            orders = [codes.reshape(n, -1).T, np.moveaxis(codes, 1, -1).reshape(n, -1).T]
        else:
            orders = [codes.T if node.op_type == "Gemm" and trans_b else codes]
        for kn in orders:
            if len(kn) % 2:
                kn = np.concatenate([kn, np.zeros_like(kn[:1])])
            assert kn.reshape(-1, 2, kn.shape[1]).sum(axis=1).max() <= 128, node.name
        wider += int(codes.max() > 64)
    assert weights > 10 and activations > 0
    assert wider > weights // 2  # the pair bound leaves most weights more than 7 bits


def test_a_record_of_another_cpu_is_reverified_or_refused(verified, tmp_path):
    out = _copy(verified, tmp_path / "planted")
    manifest = read_manifest(out)

    # an 8-bit record made on a VNNI CPU, loaded on an AVX2 one: re-verified on the stored pairs
    def plant(data, agreement_recorded=None):
        entry = data["verified"]["int8"]
        entry["scheme"] = {"weight_bits": 8}
        entry["on"][0]["numerics"] = "x86-int8-vnni"
        entry["on"][0]["kernels"] = "x86-avx512-vnni"
        if agreement_recorded is not None:
            entry["on"][0]["stored_pairs_agreement"] = {
                "split": agreement_recorded,
                "fused": agreement_recorded,
            }

    _edit_manifest(out, plant)
    manifest = read_manifest(out)
    with Predictor(out, precision="int8", layout="fused") as p:
        chain = p.low_res_logits
        assert check_here(out, manifest, "int8", "fused", chain, AVX2) == "reverified"
        # planted: a recorded agreement these graphs cannot reach here -> refused, with numbers
        _edit_manifest(out, lambda d: plant(d, 1.0))
        manifest = read_manifest(out)
        with pytest.raises(
            PrecisionMismatchError,
            match=r"saturating, and there its stored pairs' masks agree with FP32 at 0\.\d+ < 0\.9",
        ):
            check_here(out, manifest, "int8", "fused", chain, AVX2)


def test_predictor_refuses_without_a_record(verified, tmp_path):
    out = _copy(verified, tmp_path / "legacy")
    _edit_manifest(out, lambda d: (d.pop("verified"), d.pop("verification_pairs")))
    with pytest.raises(
        PrecisionMismatchError,
        match=f"no record of the CPU.*dit-deploy verify {out} --precision int8",
    ):
        Predictor(out, precision="int8")
    with Predictor(out, precision="fp32") as p:  # FP32 needs none
        assert p.verified_here == "run"
    with Predictor(out, precision="int8", verify=False) as p:  # the trusted-deployment switch
        assert p.verified_here == "unchecked"


def test_damaged_stored_pairs_are_refused(verified, tmp_path):
    out = _copy(verified, tmp_path / "damaged")
    _edit_manifest(out, lambda d: d["verified"]["int8"]["on"][0].update(numerics="x86-int8-vnni"))
    _edit_manifest(out, lambda d: d["verified"]["int8"].update(scheme={"weight_bits": 8}))
    data = bytearray((out / PAIRS_FILE).read_bytes())
    data[-40] ^= 0xFF
    (out / PAIRS_FILE).write_bytes(bytes(data))
    manifest = read_manifest(out)
    with (
        Predictor(out, precision="int8", layout="fused", verify=False) as p,
        pytest.raises(ArtifactError, match="changed since it was written"),
    ):
        check_here(out, manifest, "int8", "fused", p.low_res_logits, AVX2)


def test_stored_pairs_of_other_fp32_graphs_and_impossible_agreements_are_refused(
    verified, tmp_path
):
    """What re-verification reads is checked first: the references' FP32 graphs are this
    export's, and a recorded agreement is an IoU in [0, 1]."""
    import hashlib

    from dit_deploy.runtime.verified_on import StoredPairs, write_pairs

    out = _copy(verified, tmp_path / "stale")
    _edit_manifest(out, lambda d: d["verified"]["int8"]["on"][0].update(numerics="x86-int8-vnni"))
    _edit_manifest(out, lambda d: d["verified"]["int8"].update(scheme={"weight_bits": 8}))
    pairs = read_pairs(out, read_manifest(out))
    others = {role: "0" * 64 for role in pairs.fp32_sha256}
    digest = write_pairs(out, StoredPairs(pairs.feeds, pairs.reference, others))
    assert digest == hashlib.sha256((out / PAIRS_FILE).read_bytes()).hexdigest()
    _edit_manifest(out, lambda d: d["verification_pairs"].update(sha256=digest))
    manifest = read_manifest(out)
    with (
        Predictor(out, precision="int8", layout="fused", verify=False) as p,
        pytest.raises(ArtifactError, match="other FP32 graphs than its dit_encoder, dit_fused"),
    ):
        check_here(out, manifest, "int8", "fused", p.low_res_logits, AVX2)
    bad = _copy(verified, tmp_path / "agreement")
    _edit_manifest(
        bad, lambda d: d["verified"]["int8"]["on"][0]["stored_pairs_agreement"].update(fused=-3)
    )
    with pytest.raises(ArtifactError, match=r"stored_pairs_agreement.fused must be in \[0, 1\]"):
        read_manifest(bad)


def test_verify_cli_adds_this_machine(verified, tmp_path, capsys):
    out = _copy(verified, tmp_path / "cli")
    _edit_manifest(
        out,
        lambda d: d["verified"]["fp16"]["on"][0].update(
            numerics="arm64-fp16", kernels="arm64-dotprod"
        ),
    )
    with Predictor(out, precision="fp16", layout="fused") as p:  # another class: re-verified
        assert p.verified_here == "reverified"
    assert (
        cli_main(["verify", str(out), "--precision", "fp16", "--json", str(tmp_path / "r.json")])
        == 0
    )
    line = capsys.readouterr().out
    assert "fp16: verified here" in line and "recorded in" in line
    records = read_manifest(out).verified["fp16"]["on"]
    assert [r["kernels"] for r in records] == ["arm64-dotprod", this_machine().family]
    assert (
        json.loads((tmp_path / "r.json").read_text())["fp16"]["numerics"] == records[-1]["numerics"]
    )
    with Predictor(out, precision="fp16", layout="fused") as p:
        assert p.verified_here == "run"


def test_verify_cli_errors_are_one_line(tmp_path, tiny_export, capsys):
    assert cli_main(["verify", str(tmp_path / "missing")]) == 1
    assert cli_main(["verify", str(tiny_export)]) == 1  # FP32 only: nothing to verify
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("dit-deploy verify: error: ") for e in err)
    assert "has no precisions to verify" in err[1]
    with pytest.raises(SystemExit) as exc:
        cli_main(["verify", str(tiny_export), "--precision", "int4"])
    assert exc.value.code == 2


def _activation_operand_scales(path: Path) -> dict[str, float]:
    """Second-operand tensor -> its Q scale, for activation x activation MatMuls."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    scales = {}
    for node in model.graph.node:
        dq = producer.get(node.input[1]) if node.op_type == "MatMul" else None
        q = producer.get(dq.input[0]) if dq is not None else None
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in inits:
            scales[q.input[0]] = float(inits[q.input[1]])
    return scales


def test_eight_bit_weights_stay_available_and_are_recorded_as_such(verified, tiny_export, tmp_path):
    out = _copy(tiny_export, tmp_path / "w8")
    opts = QuantizeOptions(
        "int8",
        calib=PairSource(None, "train", 8),
        eval=PairSource(None, "val", 8, seed=1),
        cache_dir=tmp_path / "cache",
        latency_runs=0,
        int8=Int8Options(weight_bits=8),
        # on an AVX2 CPU 8-bit weights saturate (mask agreement 0.80 here): written anyway,
        # to see what it records there (x86-int8-saturating)
        floor=Floor(0.5, 1.0),
    )
    run_quantize(out, opts, log=lambda *_: None)
    entry = read_manifest(out).verified["int8"]
    assert entry["scheme"] == {"weight_bits": 8}
    assert entry["on"][0]["numerics"] == numerics("int8", {"weight_bits": 8}, this_machine())
    q = onnx.load(str(out / "dit_fused.int8.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    assert (
        max(int(np.abs(v.astype(np.int32)).max()) for v in inits.values() if v.dtype == np.int8)
        == 127
    )
    # attention's K and V (activation second operands): the same calibrated range, but the
    # 7-bit graph's scale is 127/64 wider, so their INT8 values stay within +-64 too
    wide = _activation_operand_scales(verified / "dit_fused.int8.onnx")
    full = _activation_operand_scales(out / "dit_fused.int8.onnx")
    assert wide and set(wide) == set(full)
    for name, scale in wide.items():
        assert scale == pytest.approx(full[name] * 127 / 64, rel=1e-5), name


def test_asking_for_bf16_on_a_cpu_without_bf16_units_does_not_suggest_what_it_refuses(
    tiny_export, monkeypatch
):
    """Without BF16 units, the hint for a missing bf16 precision names where BF16 is made
    (a BF16 CPU) and what runs here, not the quantize command this CPU would refuse."""
    from dit_deploy.errors import ArtifactError
    from dit_deploy.runtime import cpu_numerics, read_manifest

    manifest = read_manifest(tiny_export)
    plain = cpu_numerics.Machine(arch="x86_64", flags=frozenset({"avx2", "fma"}), cpu="EPYC")
    monkeypatch.setattr(cpu_numerics, "this_machine", lambda *a, **k: plain)
    with pytest.raises(ArtifactError, match="CPU with BF16 units .* which this one lacks: run"):
        manifest.graph("dit_fused", "bf16", tiny_export)
    with pytest.raises(ArtifactError, match="create them with: dit-deploy quantize"):
        manifest.graph("dit_fused", "fp16", tiny_export)
