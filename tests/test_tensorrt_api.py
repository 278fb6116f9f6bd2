"""Every TensorRT, cuda.bindings and ONNX Runtime TensorRT-EP call our code makes, checked
against NVIDIA's real release wheels on a CPU: owners, argument counts, return conventions.

TensorRT's Python bindings (``tensorrt-cu12-bindings`` 10.0.1, the lowest 10.x, 10.13.3.9 and
11.4.0.106 from PyPI, about 1 MB each) are imported for real against stub ``libnvinfer``,
``libnvonnxparser`` and ``libnvinfer_plugin`` libraries compiled here from a tiny C file (the
nine C symbols the bindings link). Each version runs in its own process, which reports every
class, property and pybind ``__doc__`` signature our code touches. The calls are read from
our source (``ast``): attribute chains on ``trt``, ``cudart`` and on the variables that hold
TensorRT objects (``builder``, ``config``, ``context``, ...), with their argument counts and
whether the result is tested as a bool (``if not x.f(...)``: the binding must return bool).

cuda-bindings 12.9 and 13.x: both majors' ``cuda.bindings.runtime`` import without a GPU.
ONNX Runtime: the TensorRT EP option names we pass must be in onnxruntime-gpu's provider
library (and it must link the TensorRT major the ``gpu-trt10`` extra installs).

The wheels are cached in ``$DIT_WHEEL_CACHE`` (default ``~/.cache/dit_deploy/wheels``) and
fetched with ``pip download`` when absent (a few seconds); the tests skip only when PyPI
cannot be reached.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dit_deploy.atomic import write_bytes_atomic, write_text_atomic
from tests.conftest import pypi_reachable, stand_in_library

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    ROOT / "dit_deploy" / "runtime" / "backends" / "tensorrt.py",
    ROOT / "dit_deploy" / "engines" / "build.py",
]
CACHE = Path(os.environ.get("DIT_WHEEL_CACHE", Path.home() / ".cache" / "dit_deploy" / "wheels"))
TRT_VERSIONS = ("10.0.1", "10.13.3.9", "11.4.0.106")  # lowest 10.x, current 10.x, current 11.x
# the lowest 10.x with a wheel for CPython 3.13 (10.0.1 has wheels up to 3.12)
LOWEST_FALLBACK = "10.9.0.34"
CUDA_BINDINGS_12 = "12.9.6"
ORT_GPU = "1.31.1"  # the gpu-trt10 extra's onnxruntime-gpu
PY_TAG = f"cp{sys.version_info.major}{sys.version_info.minor}"  # wheels are per CPython
# variables holding TensorRT objects in our code -> their TensorRT class
TRT_OBJECTS = {
    "builder": "Builder",
    "network": "INetworkDefinition",
    "config": "IBuilderConfig",
    "parser": "OnnxParser",
    "profile": "IOptimizationProfile",
    "engine": "ICudaEngine",
    "context": "IExecutionContext",
    "tensor": "ITensor",
    "cache": "ITimingCache",
    "old": "ITimingCache",
    "_runtime": "Runtime",
    "runtime": "Runtime",
    "serialized": "IHostMemory",
    "logger": "Logger",
}
TRT_CONSTRUCTORS = {"Builder", "OnnxParser", "Runtime", "Logger"}
# removed in TensorRT 11 (weak typing, implicit batch, calibrators): must not be used
REMOVED_IN_11 = (
    "EXPLICIT_BATCH",
    "OBEY_PRECISION_CONSTRAINTS",
    "PREFER_PRECISION_CONSTRAINTS",
    "int8_calibrator",
    "IInt8EntropyCalibrator2",
    "platform_has_fast_fp16",
)
STUB_C = r"""
#include <stddef.h>
/* the nine C symbols the binding modules link; constructors report failure (NULL) */
void* createInferBuilder_INTERNAL(void* a, int b) { (void)a; (void)b; return NULL; }
void* createInferRefitter_INTERNAL(void* a, void* b, int c) { (void)a; (void)b; (void)c;
  return NULL; }
void* createInferRuntime_INTERNAL(void* a, int b) { (void)a; (void)b; return NULL; }
void* getPluginRegistry(void) { return NULL; }
void* getBuilderPluginRegistry(int a) { (void)a; return NULL; }
void* createNvOnnxParser_INTERNAL(void* a, void* b, int c) { (void)a; (void)b; (void)c;
  return NULL; }
void* createNvOnnxParserRefitter_INTERNAL(void* a, void* b, int c) { (void)a; (void)b; (void)c;
  return NULL; }
int getNvOnnxParserVersion(void) { return 0; }
int initLibNvInferPlugins(void* a, const char* b) { (void)a; (void)b; return 1; }
"""


# ------------------------------------------------------------------------ our calls
def _chain(node: ast.AST) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _owner(chain: list[str]) -> tuple[str, tuple[str, ...]] | None:
    root, rest = chain[0], tuple(chain[1:])
    if root == "self" and rest and rest[0] in TRT_OBJECTS:
        root, rest = rest[0], rest[1:]
    if not rest:
        return None
    if root in ("trt", "cudart"):
        return root, rest
    if root in TRT_OBJECTS:
        return TRT_OBJECTS[root], rest
    return None


def used_api() -> dict[str, list]:
    """From our source: ``attrs`` [(owner, chain)], ``calls`` [(owner, chain, nargs,
    wants_bool)], ``sets`` [(owner, name)] (property assignments)."""
    attrs, calls, sets = set(), set(), set()
    for source in SOURCES:
        tree = ast.parse(source.read_text())
        bool_tested = set()
        for node in ast.walk(tree):
            negated = isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)
            if negated and isinstance(node.operand, ast.Call):
                bool_tested.add(id(node.operand))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                chain = _chain(node.func)
                owned = _owner(chain) if chain else None
                if owned:
                    nargs = len(node.args) + len(node.keywords)
                    calls.add((*owned, nargs, id(node) in bool_tested))
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    chain = _chain(target) if isinstance(target, ast.Attribute) else None
                    owned = _owner(chain) if chain else None
                    if owned and len(owned[1]) == 1:
                        sets.add((owned[0], owned[1][0]))
            if isinstance(node, ast.Attribute):
                chain = _chain(node)
                owned = _owner(chain) if chain else None
                if owned:
                    attrs.add(owned)
    maximal = {
        (o, c)
        for o, c in attrs
        if not any(o2 == o and len(c2) > len(c) and c2[: len(c)] == c for o2, c2 in attrs)
    }
    return {"attrs": sorted(maximal), "calls": sorted(calls), "sets": sorted(sets)}


def test_source_calls_are_found():
    api = used_api()
    calls = {(o, c): (n, b) for o, c, n, b in api["calls"]}
    assert calls[("IExecutionContext", ("execute_async_v3",))] == (1, True)
    assert calls[("IExecutionContext", ("set_input_shape",))] == (2, True)
    assert calls[("IBuilderConfig", ("set_timing_cache",))] == (2, True)
    assert calls[("ITimingCache", ("combine",))] == (2, True)
    assert ("Runtime", "engine_host_code_allowed") in api["sets"]
    assert ("IBuilderConfig", "builder_optimization_level") in api["sets"]
    assert ("trt", ("BuilderFlag", "TF32")) in api["attrs"]
    assert any(o == "cudart" and c == ("cudaMemcpyAsync",) for o, c, _, _ in api["calls"])


def test_no_api_removed_in_tensorrt_11_is_used():
    names = set()
    for source in SOURCES:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
                chain = _chain(node)
                if chain and len(chain) >= 2 and chain[-2] == "BuilderFlag":
                    names.add("BuilderFlag." + chain[-1])
            elif isinstance(node, ast.Name):
                names.add(node.id)
    for name in REMOVED_IN_11:
        assert name not in names, f"{name} is gone in TensorRT 11"
    for flag in ("FP16", "INT8", "BF16"):
        assert f"BuilderFlag.{flag}" not in names
    assert "BuilderFlag.TF32" in names  # cleared: fp32 engines are fp32


# ------------------------------------------------------------------- the wheels
def _wheel(requirement: str, pattern: str, missing_ok: bool = False) -> Path | None:
    """The cached wheel for ``requirement`` (``name==version``), downloaded when absent.
    ``missing_ok``: None when the release has no wheel for this Python."""
    CACHE.mkdir(parents=True, exist_ok=True)
    found = sorted(CACHE.glob(pattern))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--quiet", "-d", str(CACHE), requirement]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    found = sorted(CACHE.glob(pattern))
    if r.returncode != 0 or not found:
        if not pypi_reachable():
            pytest.skip(f"PyPI is unreachable, so {requirement} cannot be fetched into {CACHE}")
        if "no matching distribution" in r.stderr.lower():
            if missing_ok:
                return None
            pytest.skip(f"{requirement} has no wheel for CPython {PY_TAG} on this platform")
        pytest.fail(f"pip download {requirement} failed: {r.stderr[-800:]}")
    return found[0]


def _unpacked(wheel: Path) -> Path:
    out = CACHE / (wheel.name + ".d")
    if not (out / ".done").is_file():
        shutil.rmtree(out, ignore_errors=True)
        with zipfile.ZipFile(wheel) as z:
            z.extractall(out)
        (out / ".done").write_text("")
    return out


@pytest.fixture(scope="session")
def stub_libs(tmp_path_factory) -> Path:
    """libnvinfer/libnvonnxparser/libnvinfer_plugin .so.10 and .so.11 stand-ins."""
    out = tmp_path_factory.mktemp("trt_stubs")
    for major in (10, 11):
        for lib in ("nvinfer", "nvonnxparser", "nvinfer_plugin"):
            stand_in_library(out, f"lib{lib}.so.{major}", STUB_C)
    return out


PROBE = r"""
import ctypes, inspect, json, sys
stubs, wheel_dir, root, major = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
for lib in ("nvinfer", "nvonnxparser", "nvinfer_plugin"):
    ctypes.CDLL(f"{stubs}/lib{lib}.so.{major}", mode=ctypes.RTLD_GLOBAL)
sys.path[:0] = [wheel_dir, root]
import tensorrt_bindings as trt
sys.modules["tensorrt"] = trt
api = json.loads(sys.stdin.read())
report = {"version": trt.__version__, "missing": [], "docs": {}, "settable": {}}

def resolve(owner, chain):
    obj = trt if owner == "trt" else getattr(trt, owner, None)
    if obj is None:
        return None, owner
    for part in chain:
        if isinstance(obj, type) and part in getattr(obj, "__dict__", {}):
            nxt = obj.__dict__[part]
        else:
            nxt = getattr(obj, part, None)
        if nxt is None:
            return None, owner + "." + ".".join(chain)
        obj = nxt
    return obj, None

for owner, chain in api["attrs"]:
    obj, missing = resolve(owner, chain)
    if missing:
        report["missing"].append(missing)
for owner, chain, nargs, wants_bool in api["calls"]:
    obj, missing = resolve(owner, chain)
    if missing:
        report["missing"].append(missing)
        continue
    if isinstance(obj, type):
        obj = obj.__init__
    try:
        doc = obj.__doc__ or ""
        sig = None if doc.strip() else str(inspect.signature(obj))
    except (TypeError, ValueError):
        sig = None
    report["docs"][owner + "." + ".".join(chain)] = sig or doc
for owner, name in api["sets"]:
    prop = getattr(getattr(trt, owner), name, None)
    report["settable"][owner + "." + name] = isinstance(prop, property) and prop.fset is not None

# the option check made before a build, against this real module
from dit_deploy.engines.build import EngineOptions, check_options_supported
from dit_deploy.errors import ConfigError
outcomes = {}
for level in ("ampere_plus", "same_compute_capability"):
    try:
        check_options_supported(trt, EngineOptions(export_dir=".", hardware_compatibility=level))
        outcomes[level] = "ok"
    except ConfigError as exc:
        outcomes[level] = str(exc)
report["hardware_compat"] = outcomes
report["nptype"] = {
    name: str(trt.nptype(getattr(trt.DataType, name)).__name__)
    for name in ("FLOAT", "HALF", "INT32", "INT64")
}
print(json.dumps(report))
"""


@pytest.fixture(scope="session", params=TRT_VERSIONS)
def trt_report(request, stub_libs) -> dict:
    version = request.param
    wheel = _wheel(
        f"tensorrt-cu12-bindings=={version}",
        f"tensorrt_cu12_bindings-{version}-{PY_TAG}-*.whl",
        missing_ok=version == TRT_VERSIONS[0],
    )
    if wheel is None:  # CPython 3.13+: the lowest release that has a wheel for it
        version = LOWEST_FALLBACK
        wheel = _wheel(
            f"tensorrt-cu12-bindings=={version}", f"tensorrt_cu12_bindings-{version}-{PY_TAG}-*"
        )
    api = {kind: [x for x in rows if x[0] != "cudart"] for kind, rows in used_api().items()}
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(stub_libs), str(_unpacked(wheel)), str(ROOT),
         version.split(".")[0]],
        input=json.dumps(api), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["version"] == version
    return report


def _signatures(doc: str) -> list[tuple[list[str], str]]:
    """pybind ``__doc__`` -> [(parameter texts without self, return type)], one per
    overload."""
    sigs = []
    for line in doc.splitlines():
        line = line.strip()
        if line[:3].rstrip(".").isdigit() and ". " in line[:4]:
            line = line.split(". ", 1)[1]
        if "(" not in line or "->" not in line or line.startswith("*"):
            continue
        head, _, ret = line.rpartition(") -> ")
        _, _, params = head.partition("(")
        if "*args" in params:
            continue
        parts, depth, cur = [], 0, ""
        for ch in params:
            depth += ch in "[(" and 1 or (ch in "])" and -1 or 0)
            if ch == "," and depth == 0:
                parts.append(cur.strip())
                cur = ""
            else:
                cur += ch
        if cur.strip():
            parts.append(cur.strip())
        sigs.append(([p for p in parts if not p.startswith("self")], ret.strip()))
    return sigs


def test_tensorrt_calls_match_the_real_bindings(trt_report):
    assert not trt_report["missing"], (
        f"not in TensorRT {trt_report['version']}: {trt_report['missing']}"
    )
    wrong = []
    for owner, chain, nargs, wants_bool in used_api()["calls"]:
        if owner == "cudart":
            continue
        key = owner + "." + ".".join(chain)
        doc = trt_report["docs"][key]
        if chain == ("nptype",):  # a Python function of the package: inspect.signature
            assert doc.count(",") + 1 == nargs, (key, doc)
            continue
        sigs = _signatures(doc)
        assert sigs, f"no pybind signature in the __doc__ of {key}: {doc[:200]!r}"
        fits = [
            ret for params, ret in sigs if sum("=" not in p for p in params) <= nargs <= len(params)
        ]
        if not fits:
            wrong.append(f"{key} called with {nargs} argument(s): {sigs}")
        elif wants_bool and "bool" not in fits:
            wrong.append(f"{key}'s result is tested as a bool but it returns {fits}")
    assert not wrong, f"TensorRT {trt_report['version']}: " + "; ".join(wrong)
    not_settable = [k for k, ok in trt_report["settable"].items() if not ok]
    assert not not_settable, f"read-only in TensorRT {trt_report['version']}: {not_settable}"
    assert trt_report["nptype"] == {
        "FLOAT": "float32", "HALF": "float16", "INT32": "int32", "INT64": "int64"
    }  # fmt: skip


def test_hardware_compat_levels_are_checked_before_a_build(trt_report):
    """SAME_COMPUTE_CAPABILITY arrived in TensorRT 10.9: refused with the reason on 10.0."""
    outcome = trt_report["hardware_compat"]
    assert outcome["ampere_plus"] == "ok"
    if tuple(int(p) for p in trt_report["version"].split(".")[:2]) < (10, 9):
        assert (
            "needs TensorRT >= 10.9, this is TensorRT 10.0.1" in outcome["same_compute_capability"]
        )
    else:
        assert outcome["same_compute_capability"] == "ok"


# ------------------------------------------------------------------ cuda.bindings
CUDA_PROBE = r"""
import inspect, json, sys
if sys.argv[1]:
    sys.path.insert(0, sys.argv[1])
from cuda.bindings import runtime as cudart
import cuda.bindings
calls = json.loads(sys.stdin.read())
out = {"version": cuda.bindings.__version__, "missing": [], "arity": {}}
for chain, nargs in calls:
    obj = cudart
    for part in chain:
        obj = getattr(obj, part, None)
        if obj is None:
            out["missing"].append(".".join(chain))
            break
    else:
        if callable(obj) and not isinstance(obj, type):
            try:
                params = inspect.signature(obj).parameters.values()
                out["arity"][".".join(chain)] = [
                    sum(p.default is inspect.Parameter.empty for p in params), len(params), nargs
                ]
            except (TypeError, ValueError):
                pass
# the (err, value) convention cuda_call unwraps
err, text = cudart.cudaGetErrorString(cudart.cudaError_t.cudaSuccess)
out["error_string"] = [type(err).__name__, text.decode() if isinstance(text, bytes) else text]
print(json.dumps(out))
"""


@pytest.mark.parametrize("major", [12, 13])
def test_cuda_bindings_calls_exist_in_both_majors(major):
    if major == 12:
        wheel = _wheel(
            f"cuda-bindings=={CUDA_BINDINGS_12}", f"cuda_bindings-{CUDA_BINDINGS_12}-{PY_TAG}-*"
        )
        path = str(_unpacked(wheel))
    else:
        pytest.importorskip("cuda.bindings.runtime", reason="cuda-python 13 (dev extra)")
        path = ""
    calls = [(list(c), n) for o, c, n, _ in used_api()["calls"] if o == "cudart"]
    calls += [(list(c), 0) for o, c in used_api()["attrs"] if o == "cudart"]
    calls += [(["cudaGetDeviceProperties"], 1), (["cudaGetErrorString"], 1)]  # devices.py
    r = subprocess.run(
        [sys.executable, "-c", CUDA_PROBE, path],
        input=json.dumps(calls), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["version"].startswith(f"{major}."), out["version"]
    assert not out["missing"], f"not in cuda.bindings {out['version']}: {out['missing']}"
    bad = {k: v for k, v in out["arity"].items() if v[2] and not v[0] <= v[2] <= v[1]}
    assert not bad, f"argument counts (required, all, ours) in {out['version']}: {bad}"
    assert out["error_string"] == ["cudaError_t", "no error"]


# ---------------------------------------------------------- ONNX Runtime's TRT EP
CUDA_LIB = "onnxruntime/capi/libonnxruntime_providers_cuda.so"


def test_onnxruntime_tensorrt_options_exist_in_onnxruntime_gpu(tmp_path):
    from dit_deploy.runtime.backends.onnxruntime import tensorrt_provider_options
    from dit_deploy.runtime.manifest import TensorSpec

    lib_name = "libonnxruntime_providers_tensorrt.so"
    lib = CACHE / f"onnxruntime_gpu-{ORT_GPU}-{lib_name}"
    # the CUDA provider library is 280 MB: only its NUL-delimited identifiers are kept
    cuda_names = CACHE / f"onnxruntime_gpu-{ORT_GPU}-providers_cuda.names.txt"
    if not lib.is_file() or not cuda_names.is_file():
        wheel = _wheel(f"onnxruntime-gpu=={ORT_GPU}", f"onnxruntime_gpu-{ORT_GPU}-{PY_TAG}-*.whl")
        with zipfile.ZipFile(wheel) as z:
            write_bytes_atomic(lib, z.read(f"onnxruntime/capi/{lib_name}"))
            found = re.findall(rb"\0([a-z][a-z0-9_]{2,48})(?=\0)", z.read(CUDA_LIB))
        write_text_atomic(cuda_names, "\n".join(sorted({n.decode() for n in found})) + "\n")
        wheel.unlink()  # 250 MB; the provider libraries are all this test needs
    data = lib.read_bytes()
    cuda = set(cuda_names.read_text().split())
    inputs = [
        TensorSpec("image", "float32", ["batch", 3, 96, 96]),
        TensorSpec("input_ids", "int64", ["batch", 20]),
    ]
    for precision in ("fp32", "fp16", "int8"):
        options = tensorrt_provider_options(precision, inputs, tmp_path, max_batch=8)
        missing = [k for k in options if b"\0" + k.encode() + b"\0" not in data]
        assert not missing, f"not TensorRT EP options of onnxruntime-gpu {ORT_GPU}: {missing}"
        # the values as the EP parses them: booleans, existing paths, "name:AxB,..." shapes
        # naming every input once with the profile's batch first
        for key, value in options.items():
            if key.endswith("_enable"):
                assert isinstance(value, bool), (key, value)
            elif key.endswith("_path"):
                assert Path(value).parent.is_dir(), (key, value)
            elif key.startswith("trt_profile_"):
                batch = {"min": 1, "opt": 4, "max": 8}[key.split("_")[2]]
                shapes = dict(item.split(":") for item in value.split(","))
                assert set(shapes) == {"image", "input_ids"}, value
                assert shapes["image"] == f"{batch}x3x96x96", value
                assert shapes["input_ids"] == f"{batch}x20", value
            else:
                raise AssertionError(f"an option this test does not know: {key}")
        assert options["trt_int8_enable"] == (precision == "int8")
        assert options["trt_fp16_enable"] == (precision == "fp16")
    # the options the backend adds: TF32 off (CUDA), the GPU of cuda:N / tensorrt:N (both)
    assert {"use_tf32", "device_id"} <= cuda and b"\0device_id\0" in data
    # the gpu-trt10 extra pairs it with TensorRT 10 and CUDA 13 (see pyproject.toml)
    assert b"libnvinfer.so.10\0" in data and b"libcudart.so.13\0" in data
    assert b"libnvinfer.so.11\0" not in data
