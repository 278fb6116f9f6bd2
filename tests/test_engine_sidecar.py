"""Engine sidecars: schema-checked at load (typed errors naming file and field), TensorRT's
compatibility rules from the table shared with the C++ runtime, and judged before TensorRT is
imported so one error names every problem."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from dit_deploy.errors import ArtifactError, BackendUnavailableError
from dit_deploy.runtime import devices
from dit_deploy.runtime.engine_sidecar import (
    EngineMismatchError,
    EngineSidecar,
    check_sidecar,
    engine_file,
    engine_verdict,
    read_sidecar,
    write_sidecar,
)
from dit_deploy.runtime.manifest import TensorSpec

CASES = json.loads((Path(__file__).parent / "fixtures" / "engine_compat_cases.json").read_text())


def _sidecar(**kw) -> EngineSidecar:
    data = dict(
        engine_file="dit_encoder.int8.engine",
        source_onnx="dit_encoder.int8.onnx",
        source_sha256="ab" * 32,
        role="dit_encoder",
        precision="int8",
        tensorrt_version="11.4.0.106",
        gpu_name="NVIDIA L4",
        compute_capability="8.9",
        profile={"min_batch": 2, "opt_batch": 4, "max_batch": 8, "shapes": {}},
        inputs=[TensorSpec("image", "float32", ["batch", 3, 512, 512])],
        outputs=[TensorSpec("image_embedding", "float32", ["batch", 256, 32, 32])],
        build={"command": "dit-deploy engines exports/x --precision int8 --max-batch 8"},
    )
    data.update(kw)
    return EngineSidecar(**data)


# ------------------------------------------------------------------------- the rules
@pytest.mark.parametrize("case", CASES["cases"], ids=[c["name"] for c in CASES["cases"]])
def test_compatibility_table(case):
    """The same table is run by the C++ runtime's ctest (test_engine_compat)."""
    engine = {**CASES["engine_defaults"], **case["engine"]}
    sidecar = _sidecar(**engine)
    running = case["running"]
    verdict = engine_verdict(
        sidecar,
        running["tensorrt_version"],
        running["gpu_name"],
        running["compute_capability"],
        running["source_sha256"],
    )
    if case["verdict"] == "refuse":
        assert any(case["says"] in p for p in verdict.problems), verdict
    else:
        assert not verdict.problems, verdict.problems
    if case["verdict"] == "warn":
        assert any(case["says"] in w for w in verdict.warnings), verdict
    elif case["verdict"] == "run":
        assert not verdict.warnings, verdict.warnings


def test_refusal_lists_every_problem_and_the_rebuild_command():
    with pytest.raises(EngineMismatchError) as info:
        check_sidecar(_sidecar(), "10.13.3.9", "Tesla T4", "7.5", "cd" * 32)
    text = str(info.value)
    assert "built with TensorRT 11.4.0.106, running TensorRT 10.13.3.9" in text
    assert "built for compute capability 8.9 (NVIDIA L4), this GPU (Tesla T4) has 7.5" in text
    assert "built from another version of dit_encoder.int8.onnx" in text
    assert text.endswith("Rebuild it here with: dit-deploy engines exports/x --precision int8 "
                         "--max-batch 8")  # fmt: skip


def test_same_architecture_other_model_runs_with_a_warning():
    warnings = check_sidecar(_sidecar(), "11.4.0.106", "NVIDIA L40S", "8.9")
    assert warnings and "built on NVIDIA L4, running on NVIDIA L40S" in warnings[0]


# ------------------------------------------------------------------------ the schema
def test_round_trip_uses_tensor_specs(tmp_path):
    engine = tmp_path / engine_file("dit_encoder.int8.onnx")
    assert engine_file("dit_encoder.onnx") == "dit_encoder.fp32.engine"
    with pytest.raises(ArtifactError, match="no sidecar"):
        read_sidecar(engine)
    write_sidecar(engine, _sidecar())
    back = read_sidecar(engine)
    assert back == _sidecar()
    assert isinstance(back.inputs[0], TensorSpec) and back.inputs[0].shape[0] == "batch"
    assert not list(tmp_path.glob("*tmp*")) and not list(tmp_path.glob(".*"))


def _write(tmp_path: Path, mutate) -> Path:
    engine = tmp_path / "dit_encoder.int8.engine"
    data = _sidecar().to_dict()
    mutate(data)
    (tmp_path / "dit_encoder.int8.engine.json").write_text(json.dumps(data))
    return engine


@pytest.mark.parametrize(
    ("mutate", "says"),
    [
        (lambda d: d.update(profile=[1, 4, 8]), "field 'profile' must be an object, got [1, 4, 8]"),
        (
            lambda d: d["profile"].update(max_batch="eight"),
            "field 'profile.max_batch' must be an integer >= 1, got 'eight' (str)",
        ),
        (
            lambda d: d.update(compute_capability=8.9),
            "field 'compute_capability' must be a string \"major.minor\"",
        ),
        (lambda d: d.update(inputs={"image": 1}), "field 'inputs' must be a non-empty list"),
        (
            lambda d: d["inputs"][0].update(shape="1x3x512x512"),
            "field 'inputs[0]'.shape must be a list of integers",
        ),
        (lambda d: d["outputs"].__setitem__(0, "image_embedding"), "field 'outputs[0]' must be"),
        (lambda d: d.update(version_compatible="yes"), "field 'version_compatible' must be true"),
        (lambda d: d.update(hardware_compatibility="any"), "must be one of none, ampere_plus"),
        (lambda d: d.pop("tensorrt_version"), "missing field 'tensorrt_version'"),
        (lambda d: d.update(tensorrt_version=11.4), "field 'tensorrt_version' must be a version"),
        (lambda d: d.update(source_sha256="abc"), "field 'source_sha256' must be 64"),
        (lambda d: d.update(gpu="x"), "unknown field(s) ['gpu']"),
        (lambda d: d["profile"].update(min_batch=9), "min_batch <= opt_batch <= max_batch"),
        (lambda d: d.update(sidecar_version=2), "sidecar version 2"),
    ],
)
def test_malformed_sidecar_is_a_typed_error_naming_file_and_field(tmp_path, mutate, says):
    engine = _write(tmp_path, mutate)
    with pytest.raises(ArtifactError) as info:
        read_sidecar(engine)
    assert says in str(info.value)
    assert "dit_encoder.int8.engine.json" in str(info.value)


def test_sidecar_that_is_not_json_or_not_an_object(tmp_path):
    path = tmp_path / "x.engine.json"
    path.write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="must hold a JSON object"):
        read_sidecar(tmp_path / "x.engine")
    path.write_text("{")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_sidecar(tmp_path / "x.engine")


# ------------------------------------------------------------- before TensorRT imports
def test_engine_for_another_gpu_and_missing_tensorrt_are_both_named(tmp_path, monkeypatch):
    """The sidecar is judged before ``import tensorrt``: the user learns both facts."""
    from dit_deploy.runtime.backends import tensorrt as backend

    engine = tmp_path / "dit_encoder.int8.engine"
    engine.write_bytes(b"plan")
    write_sidecar(engine, _sidecar())
    monkeypatch.setattr(backend, "installed_tensorrt_version", lambda: None)
    monkeypatch.setattr(
        backend, "gpu_info", lambda device=0: devices.GpuInfo("NVIDIA H100 PCIe", "9.0")
    )

    def no_import():
        raise AssertionError("tensorrt must not be imported before the sidecar is judged")

    monkeypatch.setattr(backend, "_import_tensorrt", no_import)
    with pytest.raises(EngineMismatchError) as info:
        backend.TensorRTBackend(engine)
    text = str(info.value)
    assert "built for compute capability 8.9 (NVIDIA L4), this GPU (NVIDIA H100 PCIe) has 9.0" in (
        text
    )
    assert "also: the tensorrt package is not installed" in text


def test_matching_engine_without_tensorrt_names_what_is_missing(tmp_path, monkeypatch):
    from dit_deploy.runtime.backends import tensorrt as backend

    engine = tmp_path / "dit_encoder.int8.engine"
    engine.write_bytes(b"plan")
    write_sidecar(engine, replace(_sidecar(), gpu_name="NVIDIA L4"))
    monkeypatch.setattr(backend, "installed_tensorrt_version", lambda: None)

    def no_cuda(device=0):
        raise BackendUnavailableError(devices.CUDA_PYTHON_HINT)

    monkeypatch.setattr(backend, "gpu_info", no_cuda)
    with pytest.raises(BackendUnavailableError) as info:
        backend.TensorRTBackend(engine)
    assert "tensorrt package is not installed" in str(info.value)
    assert "cuda-python >= 12.8 (cuda.bindings) is not installed" in str(info.value)


def test_gpu_unavailable_reason_checks_cuda_bindings(monkeypatch):
    import sys

    monkeypatch.setattr(devices, "cuda_device_count", lambda: 1)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)  # import fails
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    reason = devices.gpu_unavailable_reason(need_tensorrt=False)
    assert reason == devices.CUDA_PYTHON_HINT
