"""``dit-deploy engines`` on a CPU: the build logic against a fake ``tensorrt`` module that
behaves as TensorRT does where it matters (a version-compatible plan loads only with host
code allowed; a timing cache from another GPU is refused by ``set_timing_cache``; TF32 is on
by default). Every call the build makes on the real module is checked against the real
binding wheels by ``tests/test_tensorrt_api.py``; this file checks what the build does with
the answers."""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from dit_deploy.engines import EngineOptions, build_engines
from dit_deploy.engines import build as build_mod
from dit_deploy.engines.build import timing_cache_file
from dit_deploy.engines.cli import register
from dit_deploy.errors import ArtifactError, BackendUnavailableError, ConfigError
from dit_deploy.runtime import devices
from dit_deploy.runtime.engine_sidecar import read_sidecar, sidecar_path
from dit_deploy.runtime.manifest import GraphSpec, Manifest, TensorSpec

OTHER_GPU = b"OTHER-GPU:"


class FakeTRT(types.ModuleType):
    """Just the TensorRT surface ``engines/build.py`` uses, with TensorRT's behaviour."""

    def __init__(self, version="10.13.3.9", *, fail_build=False, same_cc=True) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: list[str] = []
        self.fail_build = fail_build
        trt = self

        class Logger:
            WARNING = 2

            def __init__(self, severity):
                self.severity = severity

        class Flag:
            TF32, VERSION_COMPATIBLE = 7, 11

        levels = {"NONE": 0, "AMPERE_PLUS": 1}
        if same_cc:
            levels["SAME_COMPUTE_CAPABILITY"] = 2
        self.Logger = Logger
        self.BuilderFlag = Flag
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
        self.HardwareCompatibilityLevel = types.SimpleNamespace(**levels)
        self.TensorIOMode = types.SimpleNamespace(INPUT=1, OUTPUT=2)
        self.DataType = types.SimpleNamespace(FLOAT=0)

        class Cache:
            def __init__(self, entries: list[bytes]):
                self.entries = entries

            def combine(self, other, ignore_mismatch):
                self.entries += [e for e in other.entries if e not in self.entries]
                return True

            def serialize(self):
                return b"|".join(self.entries)

        class Config:
            def __init__(self):
                self.flags = {Flag.TF32}  # TensorRT's default
                self.cache = None
                self.builder_optimization_level = 3
                self.hardware_compatibility_level = 0

            def set_memory_pool_limit(self, pool, size):
                self.workspace = size

            def set_flag(self, flag):
                self.flags.add(flag)

            def clear_flag(self, flag):
                self.flags.discard(flag)

            def create_timing_cache(self, blob):
                return Cache([e for e in bytes(blob).split(b"|") if e])

            def set_timing_cache(self, cache, ignore_mismatch):
                if any(e.startswith(OTHER_GPU) for e in cache.entries) and not ignore_mismatch:
                    return False
                self.cache = cache
                return True

            def get_timing_cache(self):
                return self.cache

            def add_optimization_profile(self, profile):
                self.profile = profile
                return 0

        class Tensor:
            def __init__(self, name, shape):
                self.name, self.shape = name, shape

        class Network:
            def __init__(self):
                self.inputs = [Tensor("image", (-1, 3, 8, 8))]
                self.num_inputs = 1

            def get_input(self, i):
                return self.inputs[i]

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, lo, opt, hi):
                self.shapes[name] = (lo, opt, hi)

        class Builder:
            def __init__(self, logger):
                trt.calls.append("Builder")

            def create_network(self, flags):
                assert flags == 1 << 1
                return Network()

            def create_builder_config(self):
                trt.config = Config()
                return trt.config

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                trt.calls.append("build")
                if trt.fail_build:
                    return None
                if config.cache is not None:
                    config.cache.entries.append(b"this-gpu:" + str(len(trt.calls)).encode())
                vc = Flag.VERSION_COMPATIBLE in config.flags
                return b"PLAN-VC" if vc else b"PLAN"

        class Parser:
            def __init__(self, network, logger):
                self.num_errors = 0

            def parse_from_file(self, path):
                return Path(path).is_file()

        class Engine:
            num_io_tensors = 2
            names = ("image", "logits")

            def get_tensor_name(self, i):
                return self.names[i]

            def get_tensor_mode(self, name):
                return 1 if name == "image" else 2

            def get_tensor_shape(self, name):
                return (-1, 3, 8, 8) if name == "image" else (-1, 1, 2, 2)

            def get_tensor_dtype(self, name):
                return 0

        class Runtime:
            def __init__(self, logger):
                self.engine_host_code_allowed = False

            def deserialize_cuda_engine(self, plan):
                # a version-compatible plan embeds host code: TensorRT refuses it (None)
                # unless the runtime allows it
                if bytes(plan) == b"PLAN-VC" and not self.engine_host_code_allowed:
                    return None
                return Engine() if bytes(plan).startswith(b"PLAN") else None

        self.Builder, self.OnnxParser, self.Runtime = Builder, Parser, Runtime

    @staticmethod
    def nptype(dtype):
        return np.float32


@pytest.fixture
def export_dir(tmp_path) -> Path:
    """A minimal export directory: manifest, vocabulary, one fused graph file."""
    out = tmp_path / "export"
    out.mkdir()
    (out / "vocab.txt").write_text("[PAD]\n")
    (out / "dit_fused.onnx").write_bytes(b"onnx")
    spec = GraphSpec(
        "dit_fused.onnx",
        [TensorSpec("image", "float32", ["batch", 3, 8, 8])],
        [TensorSpec("logits", "float32", ["batch", 1, 2, 2])],
    )
    Manifest(
        config_name="tiny",
        variant="layer_wise",
        input_size=8,
        max_tokens=4,
        mask_threshold=0.0,
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[1.0, 1.0, 1.0],
        tokenizer={"vocab_file": "vocab.txt", "lowercase": True, "max_tokens": 4},
        graphs={"dit_fused": spec},
    ).write(out)
    return out


@pytest.fixture
def gpu_machine(monkeypatch):
    """This machine as a GPU machine with ``tensorrt`` = a FakeTRT (returned)."""

    def install(trt: FakeTRT) -> FakeTRT:
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(build_mod, "gpu_unavailable_reason", lambda: None)
        monkeypatch.setattr(build_mod, "gpu_info", lambda: devices.GpuInfo("NVIDIA H200", "9.0"))
        return trt

    return install


def test_build_writes_engine_and_sidecar_tf32_off(export_dir, gpu_machine):
    trt = gpu_machine(FakeTRT())
    paths = build_engines(EngineOptions(export_dir, max_batch=4), log=lambda m: None)
    assert paths == [export_dir / "dit_fused.fp32.engine"]
    assert paths[0].read_bytes() == b"PLAN"
    assert trt.BuilderFlag.TF32 not in trt.config.flags  # fp32 means fp32
    sidecar = read_sidecar(paths[0])
    assert sidecar.build["tf32"] is False
    assert sidecar.inputs == [TensorSpec("image", "float32", ["batch", 3, 8, 8])]
    assert sidecar.outputs == [TensorSpec("logits", "float32", ["batch", 1, 2, 2])]
    assert sidecar.profile["shapes"]["image"] == [[1, 3, 8, 8], [2, 3, 8, 8], [4, 3, 8, 8]]
    assert (sidecar.gpu_name, sidecar.compute_capability) == ("NVIDIA H200", "9.0")
    assert not list(export_dir.glob("*tmp*")) and not list(export_dir.glob(".*"))


def test_version_compatible_build_loads_back_with_host_code_allowed(export_dir, gpu_machine):
    gpu_machine(FakeTRT())
    [path] = build_engines(EngineOptions(export_dir, version_compatible=True), log=lambda m: None)
    assert path.read_bytes() == b"PLAN-VC"
    assert read_sidecar(path).version_compatible is True


def test_engine_that_does_not_load_back_leaves_nothing(export_dir, gpu_machine, monkeypatch):
    gpu_machine(FakeTRT())
    monkeypatch.setattr(build_mod, "_load_back", lambda *a: None)
    with pytest.raises(ArtifactError, match="cannot load it back"):
        build_engines(EngineOptions(export_dir), log=lambda m: None)
    assert sorted(p.name for p in export_dir.iterdir()) == [
        "dit_fused.onnx", "manifest.json", "vocab.txt"
    ]  # fmt: skip


def test_failed_build_is_a_typed_error(export_dir, gpu_machine):
    gpu_machine(FakeTRT(fail_build=True))
    with pytest.raises(ArtifactError, match="TensorRT failed to build dit_fused.onnx"):
        build_engines(EngineOptions(export_dir), log=lambda m: None)
    assert not list(export_dir.glob("*.engine*"))


def test_timing_cache_is_one_file_per_gpu_and_tensorrt_version(export_dir, gpu_machine, tmp_path):
    trt = gpu_machine(FakeTRT())
    base = tmp_path / "shared" / "timing.cache"
    base.parent.mkdir()
    base.write_bytes(OTHER_GPU + b"1")  # another GPU's timings at the plain path: untouched
    notes: list[str] = []
    [engine] = build_engines(EngineOptions(export_dir, timing_cache=base), log=notes.append)
    mine = timing_cache_file(base, "9.0", trt.__version__)
    three = ".".join(trt.__version__.split(".")[:3])  # the engine's own compatibility unit
    assert mine.name == f"timing.sm90.trt{three}.cache"
    assert base.read_bytes() == OTHER_GPU + b"1"
    [entry] = mine.read_bytes().split(b"|")
    assert entry.startswith(b"this-gpu:")
    assert json.loads(sidecar_path(engine).read_text())["build"]["timing_cache"] == str(mine)
    # second build: this GPU's file attaches, and both builds' entries are kept
    build_engines(EngineOptions(export_dir, timing_cache=base), log=notes.append)
    assert len([e for e in mine.read_bytes().split(b"|") if e.startswith(b"this-gpu")]) == 2
    assert not any("not usable" in n for n in notes)


def test_an_unwritable_timing_cache_keeps_the_engine(export_dir, gpu_machine, tmp_path):
    gpu_machine(FakeTRT())
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache's directory should be")
    notes: list[str] = []
    [engine] = build_engines(
        EngineOptions(export_dir, timing_cache=blocker / "timing.cache"), log=notes.append
    )
    assert engine.is_file() and sidecar_path(engine).is_file()
    assert any("could not save the timing cache" in n for n in notes)


def test_no_timing_cache_to_save_is_skipped(export_dir, gpu_machine, tmp_path, monkeypatch):
    trt = gpu_machine(FakeTRT())
    cache = tmp_path / "timing.cache"
    notes: list[str] = []
    real_builder = trt.Builder

    class Builder(real_builder):
        def create_builder_config(self):
            config = super().create_builder_config()
            config.set_timing_cache = lambda cache, ignore: False  # nothing attaches
            return config

    trt.Builder = Builder
    [path] = build_engines(EngineOptions(export_dir, timing_cache=cache), log=notes.append)
    assert path.is_file() and not cache.exists()
    assert any("no timing cache to save" in n for n in notes)


def test_everything_is_checked_before_the_build(export_dir, gpu_machine, monkeypatch):
    trt = gpu_machine(FakeTRT("10.0.1", same_cc=False))
    options = EngineOptions(export_dir, hardware_compatibility="same_compute_capability")
    with pytest.raises(ConfigError, match="needs TensorRT >= 10.9, this is TensorRT 10.0.1"):
        build_engines(options, log=lambda m: None)
    assert trt.calls == []

    def no_cuda_python():
        raise BackendUnavailableError(devices.CUDA_PYTHON_HINT)

    monkeypatch.setattr(build_mod, "gpu_info", no_cuda_python)
    with pytest.raises(BackendUnavailableError, match="cuda-python"):
        build_engines(EngineOptions(export_dir), log=lambda m: None)
    assert trt.calls == [] and not list(export_dir.glob("*.engine*"))


def test_no_gpu_names_every_missing_piece_and_the_command(export_dir, monkeypatch):
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 0)
    monkeypatch.setattr(build_mod, "gpu_unavailable_reason", devices.gpu_unavailable_reason)
    options = EngineOptions(export_dir, ("fp32",), command="dit-deploy engines X --precision fp32")
    with pytest.raises(BackendUnavailableError) as info:
        build_engines(options)
    text = str(info.value)
    assert "no NVIDIA GPU/driver" in text and "dit_fused.onnx" in text
    assert text.endswith("run: dit-deploy engines X --precision fp32")


def test_options_are_validated():
    for kw, says in [
        ({"max_batch": 2, "opt_batch": 4}, "min batch"),
        ({"builder_optimization_level": 6}, "0..5"),
        ({"precisions": ("fp8",)}, "--precision"),
        ({"layout": "both"}, "--layout"),
    ]:
        with pytest.raises(ConfigError, match=says):
            EngineOptions(Path("x"), **kw)


def test_missing_precision_in_export_is_named(export_dir, gpu_machine):
    gpu_machine(FakeTRT())
    with pytest.raises(ArtifactError, match="no int8 graphs"):
        build_engines(EngineOptions(export_dir, ("int8",)))


def test_engines_verb_parses_into_options_and_prints_json(export_dir, gpu_machine, capsys):
    gpu_machine(FakeTRT())
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["engines", str(export_dir), "--max-batch", "2", "--json"])
    assert args.handler(args) == 0
    [sidecar] = json.loads(capsys.readouterr().out)
    assert sidecar["profile"]["max_batch"] == 2
    assert sidecar["build"]["command"] == (
        f"dit-deploy engines {export_dir} --precision fp32 --max-batch 2"
    )
    assert (
        "dit-deploy engines exports/refcoco_vit_b"
        in parser._subparsers._group_actions[0].choices["engines"].format_help()
    )


def test_to_trt_script_without_gpu_exits_1_with_one_line(export_dir, monkeypatch, capsys):
    from dit_deploy.cli import verb_main

    main = verb_main("engines")

    monkeypatch.setattr(build_mod, "gpu_unavailable_reason", lambda: "no NVIDIA GPU (test)")
    assert main([str(export_dir), "--max-batch", "4"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no NVIDIA GPU (test)" in err
    assert f"run: dit-deploy engines {export_dir} --precision fp32 --max-batch 4" in err
    assert main([str(export_dir), "--max-batch", "2", "--opt-batch", "4"]) == 1


# ------------------------------------------------------------- Polygraphy comparator
@pytest.fixture
def fused_export(tmp_path) -> Path:
    """A fused export whose graph is logits = 0.1 * image (FP32) and an FP16 variant
    (the same in float16): real ONNX Runtime, real Polygraphy."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    def model(fp16: bool):
        inputs = [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8]),
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", 4]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", 4]),
        ]
        out = helper.make_tensor_value_info("low_res_logits", TensorProto.FLOAT, ["batch", 3, 8, 8])
        if fp16:
            tenth = helper.make_tensor("tenth", TensorProto.FLOAT16, [], [0.1])
            nodes = [
                helper.make_node("Cast", ["image"], ["h"], to=TensorProto.FLOAT16),
                helper.make_node("Constant", [], ["c"], value=tenth),
                helper.make_node("Mul", ["h", "c"], ["h2"]),
                helper.make_node("Cast", ["h2"], ["low_res_logits"], to=TensorProto.FLOAT),
            ]
        else:
            tenth = helper.make_tensor("tenth", TensorProto.FLOAT, [], [0.1])
            nodes = [
                helper.make_node("Constant", [], ["c"], value=tenth),
                helper.make_node("Mul", ["image", "c"], ["low_res_logits"]),
            ]
        m = helper.make_model(helper.make_graph(nodes, "g", inputs, [out]),
                              opset_imports=[helper.make_opsetid("", 17)])  # fmt: skip
        m.ir_version = 8
        return m

    out = tmp_path / "export"
    out.mkdir()
    onnx.save(model(False), out / "dit_fused.onnx")
    onnx.save(model(True), out / "dit_fused.fp16.onnx")
    (out / "vocab.txt").write_text(
        (Path(__file__).parent / "fixtures" / "tiny_vocab.txt").read_text()
    )
    ins = [
        TensorSpec("image", "float32", ["batch", 3, 8, 8]),
        TensorSpec("input_ids", "int64", ["batch", 4]),
        TensorSpec("attention_mask", "int64", ["batch", 4]),
    ]
    outs = [TensorSpec("low_res_logits", "float32", ["batch", 3, 8, 8])]
    from dit_deploy.hashing import sha256_file

    def sha(name: str) -> str:  # recorded as an export records them: the runtime checks each
        return sha256_file(out / name)

    Manifest(
        config_name="tiny",
        variant="layer_wise",
        input_size=8,
        max_tokens=4,
        mask_threshold=0.0,
        pixel_mean=[0.485, 0.456, 0.406],
        pixel_std=[0.229, 0.224, 0.225],
        tokenizer={"vocab_file": "vocab.txt", "lowercase": True, "max_tokens": 4,
                   "sha256": sha("vocab.txt")},
        graphs={"dit_fused": GraphSpec("dit_fused.onnx", ins, outs, sha256=sha("dit_fused.onnx"))},
        precisions={"fp16": {"dit_fused": GraphSpec("dit_fused.fp16.onnx", ins, outs,
                                                    sha256=sha("dit_fused.fp16.onnx"),
                                                    precision="fp16")}},
    ).write(out)  # fmt: skip
    return out


def test_polygraphy_comparator_measures_the_precision_error(fused_export, capsys):
    pytest.importorskip("polygraphy")
    from dit_deploy.engines.compare import CompareOptions, compare_graphs, main

    [result] = compare_graphs(
        CompareOptions(fused_export, "fp16", candidate="onnxruntime"), log=lambda m: None
    )
    assert result.role == "dit_fused" and result.passed
    err = result.max_abs["low_res_logits"]
    assert 0 < err < 1e-3  # fp16 rounding of 0.1 * normalised pixels (|x| < 3)
    assert main([str(fused_export), "--precision", "fp16", "--candidate", "onnxruntime",
                 "--atol", str(err / 2)]) == 1  # fmt: skip
    assert "dit_fused     FAIL" in capsys.readouterr().out
    assert main([str(fused_export), "--precision", "fp16", "--candidate", "tensorrt"]) == 2
    assert "no engine" in capsys.readouterr().err
