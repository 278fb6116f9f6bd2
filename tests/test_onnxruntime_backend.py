"""The ONNX Runtime backend refuses a CUDA/TensorRT provider that did not actually start (ONNX
Runtime falls back to the CPU with only a warning), and gives the TensorRT provider the
graph's precision and a batch profile from the manifest. Real onnxruntime (CPU build)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gpu_boundary import gpu_boundary

from dit_deploy.errors import BackendUnavailableError
from dit_deploy.runtime.backends.onnxruntime import (
    OnnxRuntimeBackend,
    session_providers,
    tensorrt_provider_options,
)
from dit_deploy.runtime.manifest import GraphSpec, Manifest, TensorSpec

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.fixture
def export_dir(tmp_path) -> Path:
    """An export with one fp16 graph (y = x + x) listed in its manifest."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 2, 2])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 2, 2])
    graph = helper.make_graph([helper.make_node("Add", ["image", "image"], ["logits"])], "g", [x],
                              [y])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    out = tmp_path / "export"
    out.mkdir()
    onnx.save(model, out / "dit_fused.fp16.onnx")
    onnx.save(model, out / "dit_fused.onnx")
    (out / "vocab.txt").write_text("[PAD]\n")
    spec = GraphSpec(
        "dit_fused.onnx",
        [TensorSpec("image", "float32", ["batch", 3, 2, 2])],
        [TensorSpec("logits", "float32", ["batch", 3, 2, 2])],
    )
    fp16 = GraphSpec("dit_fused.fp16.onnx", spec.inputs, spec.outputs, precision="fp16")
    Manifest(
        config_name="tiny",
        variant="layer_wise",
        input_size=4,
        max_tokens=4,
        mask_threshold=0.0,
        pixel_mean=[0.0] * 3,
        pixel_std=[1.0] * 3,
        tokenizer={"vocab_file": "vocab.txt", "lowercase": True, "max_tokens": 4},
        graphs={"dit_fused": spec},
        precisions={"fp16": {"dit_fused": fp16}},
    ).write(out)
    return out


def test_cpu_runs(export_dir):
    b = OnnxRuntimeBackend(export_dir / "dit_fused.onnx")
    image = np.ones((2, 3, 2, 2), np.float32)
    np.testing.assert_array_equal(b.run({"image": image})["logits"], 2 * image)
    assert b.providers == ["CPUExecutionProvider"] and b.tensorrt_options is None


def test_cuda_provider_that_did_not_start_is_refused_with_its_reason(export_dir, monkeypatch):
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    with pytest.raises(BackendUnavailableError) as info:
        OnnxRuntimeBackend(export_dir / "dit_fused.onnx", device="cuda")
    text = str(info.value)
    assert "did not start CUDAExecutionProvider" in text
    assert "running ['CPUExecutionProvider']" in text
    assert "this onnxruntime has no libonnxruntime_providers_cuda.so" in text


@pytest.fixture
def gpu_onnxruntime(monkeypatch) -> dict:
    """ONNX Runtime as onnxruntime-gpu would be: GPU providers listed, sessions created on
    the CPU with the providers they were asked for recorded under ``"providers"``."""
    seen: dict = {}
    real_session = ort.InferenceSession

    def recording_session(path, sess_options=None, providers=None):
        seen["providers"] = providers
        return real_session(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
    ])  # fmt: skip
    monkeypatch.setattr(ort, "InferenceSession", recording_session)
    return seen


def test_tensorrt_provider_gets_precision_and_profile_from_the_manifest(
    export_dir, monkeypatch, gpu_onnxruntime
):
    from dit_deploy.runtime.backends import onnxruntime as ort_backend

    preloads = []
    monkeypatch.setattr(ort, "preload_dlls", lambda: preloads.append("cuda"), raising=False)
    monkeypatch.setattr(ort_backend, "PRELOADED", set())
    seen = gpu_onnxruntime
    with pytest.raises(BackendUnavailableError, match="did not start TensorrtExecutionProvider"):
        OnnxRuntimeBackend(export_dir / "dit_fused.fp16.onnx", device="tensorrt", max_batch=8)
    # the NVIDIA wheels' CUDA/cuDNN libraries were loaded before the session (the providers
    # have no RUNPATH to them); TensorRT's only where the tensorrt package is installed
    assert preloads == ["cuda"] and "cuda" in ort_backend.PRELOADED
    name, options = seen["providers"][0]
    assert name == "TensorrtExecutionProvider"
    assert options["trt_fp16_enable"] is True and options["trt_int8_enable"] is False
    assert options["trt_profile_min_shapes"] == "image:1x3x2x2"
    assert options["trt_profile_opt_shapes"] == "image:4x3x2x2"
    assert options["trt_profile_max_shapes"] == "image:8x3x2x2"
    assert options["trt_engine_cache_path"] == str(export_dir / "ort_trt_cache")
    # TF32 off in the CUDA provider: an fp32 cell computes FP32, like our own engines
    assert seen["providers"][1:] == [
        ("CUDAExecutionProvider", {"use_tf32": "0", "device_id": "0"}),
        "CPUExecutionProvider",
    ]


@pytest.mark.parametrize(
    ("precision", "fp16", "int8"), [("fp32", False, False), ("fp16", True, False),
                                    ("int8", False, True)]
)  # fmt: skip
def test_tensorrt_precision_flags(tmp_path, precision, fp16, int8):
    options = tensorrt_provider_options(precision, None, tmp_path)
    assert (options["trt_fp16_enable"], options["trt_int8_enable"]) == (fp16, int8)
    assert "trt_profile_min_shapes" not in options  # no manifest: no explicit profile
    two = [TensorSpec("input_ids", "int64", ["batch", 20]), TensorSpec("mask", "int64",
                                                                        ["batch", 20])]  # fmt: skip
    shapes = tensorrt_provider_options(precision, two, tmp_path, max_batch=2)
    assert shapes["trt_profile_max_shapes"] == "input_ids:2x20,mask:2x20"
    assert shapes["trt_profile_opt_shapes"] == "input_ids:1x20,mask:1x20"


@pytest.mark.gpu
@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_gpu_providers_start_and_match_the_cpu(export_dir, device):
    """onnxruntime-gpu (the gpu-trt10 extra): the provider really runs, same numbers."""
    import onnxruntime

    provider = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[device]
    image = np.random.default_rng(0).normal(size=(3, 3, 2, 2)).astype(np.float32)
    cpu = OnnxRuntimeBackend(export_dir / "dit_fused.onnx").run({"image": image})["logits"]
    # what the session will get, from this graph's manifest entry: no device needed
    providers = dict(session_providers(export_dir / "dit_fused.onnx", device, max_batch=4))
    assert list(providers)[0] == provider and providers["CUDAExecutionProvider"]["use_tf32"] == "0"
    if device == "tensorrt":
        assert providers[provider]["trt_profile_max_shapes"] == "image:4x3x2x2"
        assert not providers[provider]["trt_fp16_enable"]  # the fp32 graph
    gpu_boundary(need_tensorrt=device == "tensorrt")
    if provider not in onnxruntime.get_available_providers():  # gpu_check.sh's other extras
        pytest.skip(f"this onnxruntime has no {provider} (the gpu-trt10 extra installs it)")
    b = OnnxRuntimeBackend(export_dir / "dit_fused.onnx", device=device, max_batch=4)
    assert b.providers[0] == {"cuda": "CUDAExecutionProvider",
                              "tensorrt": "TensorrtExecutionProvider"}[device]  # fmt: skip
    np.testing.assert_allclose(b.run({"image": image})["logits"], cpu, atol=1e-5)


def test_the_cpu_loads_no_gpu_library(export_dir, monkeypatch):
    from dit_deploy.runtime.backends import onnxruntime as ort_backend

    preloads = []
    monkeypatch.setattr(ort, "preload_dlls", lambda: preloads.append("cuda"), raising=False)
    monkeypatch.setattr(ort_backend, "PRELOADED", set())
    OnnxRuntimeBackend(export_dir / "dit_fused.onnx", device="cpu")
    assert preloads == [] and not ort_backend.PRELOADED


def test_cuda_n_reaches_both_gpu_providers(export_dir, gpu_onnxruntime):
    with pytest.raises(BackendUnavailableError, match="did not start"):
        OnnxRuntimeBackend(export_dir / "dit_fused.onnx", device="tensorrt:1")
    (_, trt_options), (_, cuda_options), _ = gpu_onnxruntime["providers"]
    assert trt_options["device_id"] == 1 and cuda_options["device_id"] == "1"


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "cpu:0", "CUDA"])
def test_bad_device_strings_are_refused_naming_the_forms(export_dir, device):
    from dit_deploy.errors import InputError
    from dit_deploy.runtime import Predictor
    from dit_deploy.runtime.devices import parse_device

    assert parse_device("cuda:3") == ("cuda", 3) and parse_device("cpu") == ("cpu", 0)
    with pytest.raises(InputError, match="use cpu, cuda, cuda:N"):
        parse_device(device)
    with pytest.raises(InputError, match="use cpu, cuda, cuda:N"):
        Predictor(export_dir, device=device)


def test_device_strings_are_the_shared_table():
    """The C++ runtime reads device strings by the same table (cpp/tests/test_devices.cpp)."""
    import json

    from dit_deploy.errors import InputError
    from dit_deploy.runtime.devices import parse_device

    table = json.loads((Path(__file__).parent / "fixtures" / "device_strings.json").read_text())
    assert len(table["cases"]) >= 14
    for case in table["cases"]:
        if case.get("error"):
            with pytest.raises(InputError, match="use cpu, cuda, cuda:N"):
                parse_device(case["device"])
        else:
            assert parse_device(case["device"]) == (case["kind"], case["index"]), case


def test_tensorrt_options_are_the_shared_table():
    """The C++ runtime builds the same options from the same table (cpp/tests/
    test_ort_options.cpp): booleans as the C API takes them, "1"/"0"."""
    import json
    from pathlib import Path

    table = json.loads(
        (Path(__file__).parent / "fixtures" / "ort_tensorrt_options.json").read_text()
    )
    inputs = [TensorSpec(**t) for t in table["inputs"]]
    assert len(table["cases"]) == 6
    for case in table["cases"]:
        got = tensorrt_provider_options(
            case["precision"], inputs, case["cache"], max_batch=case["max_batch"]
        )
        as_c_api = {
            k: ("1" if v is True else "0" if v is False else str(v)) for k, v in got.items()
        }
        assert as_c_api == case["options"], case["precision"]
