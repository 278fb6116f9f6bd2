"""The GPU libraries load, checked on a CPU: ``dlopen`` needs no GPU, only CUDA's start does.

A throwaway environment gets what the ``gpu-trt10`` extra installs for ONNX Runtime, from
PyPI: the real ``onnxruntime-gpu`` wheel and NVIDIA's CUDA runtime, cuBLAS, cuFFT, cuRAND and
cuDNN wheels. Then the project's own loading step (``_preload_gpu_libraries``, as the ONNX
Runtime backend runs it before a ``cuda``/``tensorrt`` session) runs there, and both provider
libraries are opened with ``RTLD_NOW`` (every symbol bound). Two libraries only a GPU machine
has are stand-ins: the driver (``libcuda.so.1``) and TensorRT's ``libnvinfer.so.10`` /
``libnvonnxparser.so.10`` (``tensorrt-cu13-libs`` comes from NVIDIA's own index), compiled
here and exporting exactly the symbols the providers import from them. Everything else the
providers link must come from the wheels through our loading step. Without that step the
same check fails naming the first library it could not find (the planted defect).

The C++ runtime's step (``cpp/src/gpu_libraries.cpp``, run by its ONNX Runtime backend before
a CUDA or TensorRT session) is checked the same way: a probe linked against that wheel's
``libonnxruntime`` asks ONNX Runtime for the CUDA provider; after the step, the only library
missing is the driver's.

The environment is cached beside the binding wheels (``$DIT_WHEEL_CACHE``, about 2.5 GB;
building it takes about 30 s); skipped only when PyPI cannot be reached.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import pypi_reachable, stand_in_library

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

from test_tensorrt_api import CACHE, ROOT

EXTRA = "gpu-trt10"
# what a GPU machine has that no wheel here can give: the driver, and TensorRT's libraries;
# the stand-ins export the symbols the provider libraries import from them (nm -D -u)
STAND_INS = {
    "libcuda.so.1": ["cuTensorMapEncodeTiled"],
    "libnvinfer.so.10": [
        "createInferBuilder_INTERNAL", "createInferRefitter_INTERNAL",
        "createInferRuntime_INTERNAL", "getInferLibVersion", "getPluginRegistry",
    ],
    "libnvonnxparser.so.10": ["createNvOnnxParser_INTERNAL", "createNvOnnxParserRefitter_INTERNAL"],
}  # fmt: skip

PROBE = r"""
import ctypes, json, sys
from pathlib import Path

preload, stand_ins = sys.argv[1] == "preload", Path(sys.argv[2])
import onnxruntime as ort
from dit_deploy.runtime.backends import onnxruntime as backend

capi = Path(ort.__file__).parent / "capi"
report = {"version": ort.__version__, "available": ort.get_available_providers()}
if preload:
    backend._preload_gpu_libraries(ort, "tensorrt")
report["preloaded"] = sorted(backend.PRELOADED)
# the providers need libonnxruntime_providers_shared first (ONNX Runtime loads it so)
ctypes.CDLL(str(capi / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)

def try_open(name):
    try:
        ctypes.CDLL(str(capi / name), mode=ctypes.RTLD_GLOBAL)  # ctypes adds RTLD_NOW
        return "loads"
    except OSError as exc:
        return str(exc).split(": ", 1)[-1] if str(capi) in str(exc) else str(exc)

names = ("libonnxruntime_providers_cuda.so", "libonnxruntime_providers_tensorrt.so")
report["without_stand_ins"] = {n: try_open(n) for n in names}
report["refusal"] = {p: backend._provider_failure(p)
                     for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")}
for lib in sorted(stand_ins.glob("lib*.so.*")):
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
report["with_stand_ins"] = {n: try_open(n) for n in names}
maps = Path("/proc/self/maps").read_text().splitlines()
report["mapped"] = sorted({Path(l.split()[-1]).name for l in maps if "/site-packages/" in l
                           and ".so" in l})
print(json.dumps(report))
"""


def _requirements() -> list[str]:
    """The ONNX Runtime part of the extra, as pyproject.toml declares it (TensorRT's own
    packages cannot be installed here; cuda-python and Polygraphy load nothing of this)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    wanted = [r for r in extras[EXTRA] if r.startswith(("onnxruntime-gpu", "nvidia-"))]
    assert any(r.startswith("onnxruntime-gpu") for r in wanted), extras[EXTRA]
    return [*wanted, "pillow"]  # pillow: the runtime's image decoding, imported with it


@pytest.fixture(scope="module")
def gpu_env() -> Path:
    """A venv with the extra's onnxruntime-gpu and NVIDIA wheels (cached, built once)."""
    reqs = _requirements()
    key = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:12]
    venv = CACHE / f"onnxruntime-gpu-env-{key}"
    python = venv / "bin" / "python"
    if (venv / ".done").is_file():
        return python
    if not pypi_reachable():
        pytest.skip("PyPI is unreachable: the onnxruntime-gpu environment cannot be built")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    r = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--only-binary=:all:", *reqs],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    (venv / ".done").write_text("\n".join(reqs))
    return python


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpu_stand_ins")
    for soname, symbols in STAND_INS.items():
        stand_in_library(out, soname, "".join(f"void {s}(void) {{}}\n" for s in symbols))
    return out


def _probe(python: Path, stand_ins: Path, preload: bool) -> dict:
    r = subprocess.run(
        [str(python), "-c", PROBE, "preload" if preload else "none", str(stand_ins)],
        capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_our_loading_step_makes_both_providers_load(gpu_env, stand_ins):
    report = _probe(gpu_env, stand_ins, preload=True)
    assert report["version"].startswith("1.31."), report
    assert report["preloaded"] == ["cuda"]  # no tensorrt package here: its libs are stand-ins
    # with only the driver and TensorRT standing in, every symbol of both providers binds
    assert report["with_stand_ins"] == {
        "libonnxruntime_providers_cuda.so": "loads",
        "libonnxruntime_providers_tensorrt.so": "loads",
    }, report
    # cuDNN is opened by the CUDA provider at run time, not linked: the step loaded it too
    assert any(m.startswith("libcudnn.so.9") for m in report["mapped"]), report["mapped"]
    assert any(m.startswith("libcublasLt.so.13") for m in report["mapped"]), report["mapped"]
    # before the stand-ins, what is missing is exactly what a GPU machine adds, and the
    # refusal a user would see names it
    cuda, trt = report["without_stand_ins"].values()
    assert cuda.startswith("libcuda.so.1: cannot open shared object file"), cuda
    assert trt.startswith("libnvinfer.so.10: cannot open shared object file"), trt
    assert "libnvinfer.so.10" in report["refusal"]["TensorrtExecutionProvider"]


def test_without_the_loading_step_the_providers_do_not_load(gpu_env, stand_ins):
    """The planted defect: no preload (the state before the fix). pip's provider libraries
    have no RUNPATH to the NVIDIA wheels, so cuBLAS is not found, driver or not."""
    report = _probe(gpu_env, stand_ins, preload=False)
    assert report["preloaded"] == []
    cuda = report["with_stand_ins"]["libonnxruntime_providers_cuda.so"]
    assert cuda.startswith("libcublasLt.so.13: cannot open shared object file"), cuda
    assert (
        "cannot open shared object file"
        in (report["with_stand_ins"]["libonnxruntime_providers_tensorrt.so"])
    )


def _ort_headers() -> Path | None:
    for d in (ROOT / ".deps" / "onnxruntime" / "include" / "onnxruntime",
              Path("/usr/include/onnxruntime"), Path("/usr/include")):  # fmt: skip
        if (d / "onnxruntime_cxx_api.h").is_file():
            return d
    return None


@pytest.fixture(scope="module")
def cpp_probe(gpu_env, tmp_path_factory) -> tuple[Path, Path]:
    """tests/gpu_loading_probe.cpp linked against the extra's onnxruntime-gpu library, laid
    out by scripts/link_onnxruntime.sh as install_cpp_deps.sh does, and a one-node ONNX graph
    for it to open."""
    from conftest import skip_or_require

    cxx, headers = shutil.which("c++"), _ort_headers()
    if cxx is None or headers is None:
        skip_or_require("DIT_REQUIRE_CPP", "no C++ compiler or ONNX Runtime headers "
                        "(bash scripts/install_cpp_deps.sh)")  # fmt: skip
    out = tmp_path_factory.mktemp("cpp_probe")
    # the library directory exactly as scripts/install_cpp_deps.sh lays it out
    link = ROOT / "scripts" / "link_onnxruntime.sh"
    subprocess.run(["bash", str(link), str(gpu_env), str(out / "lib")], check=True, timeout=120)
    probe = out / "probe"
    sources = [ROOT / "tests" / "gpu_loading_probe.cpp", ROOT / "cpp" / "src" / "gpu_libraries.cpp"]
    lib = out / "lib"
    subprocess.run(
        [cxx, "-std=c++17", f"-I{ROOT / 'cpp' / 'src'}", f"-isystem{headers}", *map(str, sources),
         f"-L{lib}", "-lonnxruntime", f"-Wl,-rpath,{lib}", "-ldl", "-o", str(probe)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, out / "add.onnx")
    return probe, out / "add.onnx"


def test_the_cpp_runtime_loading_step_leaves_only_the_driver_missing(cpp_probe):
    """The C++ runtime, linked against pip's onnxruntime-gpu, asks for the CUDA provider:
    after its loading step (the one ``backend_onnxruntime.cpp`` runs) the one library ONNX
    Runtime cannot find is the driver's, which only a GPU machine has; without the step, the
    wheels' cuBLAS is missing (the planted defect)."""
    probe, model = cpp_probe
    env = {"PATH": "/usr/bin:/bin"}
    run = subprocess.run([str(probe), "preload", str(model)], capture_output=True, text=True,
                         timeout=120, env=env)  # fmt: skip
    lines = dict(line.split(": ", 1) for line in run.stdout.splitlines())
    assert lines["site-packages"].endswith("site-packages"), run.stdout + run.stderr
    assert lines["preloaded"].startswith(("7", "8", "9")) and lines["preloaded"].endswith(
        "failed: 0"
    ), run.stdout
    # ONNX Runtime's log (stderr) names the library the provider could not load
    assert "Failed to load shared library" in lines["cuda"], run.stdout
    assert "libcuda.so.1: cannot open shared object file" in run.stderr, run.stderr
    assert "libcublas" not in run.stderr and "libcudart" not in run.stderr, run.stderr
    run = subprocess.run([str(probe), "none", str(model)], capture_output=True, text=True,
                         timeout=120, env=env)  # fmt: skip
    assert "libcublasLt.so.13: cannot open shared object file" in run.stderr, run.stderr
