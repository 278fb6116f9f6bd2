"""The GPU extras of pyproject.toml are coherent sets: one TensorRT major on one CUDA major,
cuda-python of that CUDA major with ``cuda.bindings``, onnxruntime-gpu only beside the
TensorRT major its TensorRT provider links. Resolved for real with ``pip install --dry-run
--report`` against PyPI (metadata only, a few seconds each; nothing is installed), with
stand-ins for NVIDIA's ``tensorrt-cu*-libs`` (their real packages fetch their files from
NVIDIA's own index while pip resolves them, which CI cannot reach). Skipped only when PyPI
is unreachable."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import pypi_reachable

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
# extra -> (TensorRT package, TensorRT major, CUDA major, onnxruntime-gpu expected)
GPU_EXTRAS = {
    "gpu": ("tensorrt-cu13", 11, 13, False),
    "gpu-trt10": ("tensorrt-cu13", 10, 13, True),
    "gpu-cu12": ("tensorrt-cu12", 11, 12, False),
}


def _name(req: str) -> str:
    return re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower()


@pytest.mark.parametrize("extra", GPU_EXTRAS)
def test_declared_sets_are_coherent(extra):
    trt, trt_major, cuda_major, with_ort = GPU_EXTRAS[extra]
    reqs = {_name(r): r for r in EXTRAS[extra]}
    assert reqs[trt] == f"{trt}>={trt_major}.{'13.2' if trt_major == 10 else '0'},<{trt_major + 1}"
    floor = "12.8" if cuda_major == 12 else "13.0"  # 12.6 has no cuda.bindings
    assert reqs["cuda-python"] == f"cuda-python>={floor},<{cuda_major + 1}"
    assert "polygraphy" in reqs
    assert ("onnxruntime-gpu" in reqs) == with_ort
    assert "tensorrt" not in reqs  # the metapackage follows the newest major and CUDA


def _stand_in(directory: Path, name: str, version: str) -> None:
    """An empty wheel named like NVIDIA's ``tensorrt_cu*_libs`` (a local wheel wins over
    the sdist of the same version, so pip never runs that sdist's download)."""
    dist = f"{name}-{version}"
    files = {
        f"{dist}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: stand-in\n"
        ),
        f"{dist}.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: dit-deploy tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ),
    }
    record = ""
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record += f"{path},sha256={digest.decode()},{len(text)}\n"
    files[f"{dist}.dist-info/RECORD"] = record + f"{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(directory / f"{dist}-py3-none-any.whl", "w") as z:
        for path, text in files.items():
            z.writestr(path, text)


def _pip(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> Path:
    if not pypi_reachable():
        pytest.skip("PyPI is unreachable: the GPU extras cannot be resolved here")
    out = tmp_path_factory.mktemp("standins")
    for cuda in (12, 13):
        name = f"tensorrt_cu{cuda}_libs"
        r = _pip("index", "versions", name.replace("_", "-"), timeout=60)
        versions = re.findall(r"[\d.]+(?:\.post\d+)?", r.stdout.split("versions:", 1)[-1])
        assert versions, r.stdout + r.stderr
        for version in versions:
            _stand_in(out, name, version)
    return out


PLANTED = "planted"  # gpu-cu12 under the old ``dev`` pin: must not resolve


@pytest.fixture(scope="module")
def resolved(stand_ins, tmp_path_factory) -> dict[str, tuple[int, str]]:
    """Extra (and :data:`PLANTED`) -> ``gpu_check.sh --dry-run`` (rc, output), the four
    resolutions run side by side: each is a pip process that is mostly CPU (about 45 s on a
    2-core EPYC), and one after another they were the suite's slowest minute and a half."""
    from test_gpu_check import _run

    constraint = tmp_path_factory.mktemp("planted") / "constraint.txt"
    constraint.write_text("cuda-python>=13\n")
    jobs = {e: (("--extra", e), {}) for e in GPU_EXTRAS}
    jobs[PLANTED] = (("--extra", "gpu-cu12"), {"PIP_CONSTRAINT": str(constraint)})
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {
            name: pool.submit(
                _run, tmp_path_factory.mktemp(name), *args, find_links=stand_ins, **env
            )
            for name, (args, env) in jobs.items()
        }
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("extra", GPU_EXTRAS)
def test_gpu_check_dry_run_resolves_each_extra_to_one_tensorrt_and_cuda_major(extra, resolved):
    """``scripts/gpu_check.sh --dry-run --extra X`` resolves what its install step installs
    (``.[torch,export,dev,X]``: dev once pinned cuda-python >= 13, which made gpu-cu12
    unresolvable) and prints every version."""
    trt, trt_major, cuda_major, with_ort = GPU_EXTRAS[extra]
    rc, text = resolved[extra]
    assert rc == 0, text[-2000:]
    [line] = [ln for ln in text.splitlines() if ln.startswith("resolves (")]
    found = dict(item.split("==") for item in line.split(": ", 1)[1].split())
    assert found["dit-deploy"] and found["torch"]
    for package in (trt, f"{trt}-bindings", f"{trt}-libs"):
        assert found[package].startswith(f"{trt_major}."), (package, found)
    assert found["cuda-bindings"].startswith(f"{cuda_major}."), found
    other = "tensorrt-cu12" if trt.endswith("13") else "tensorrt-cu13"
    assert not any(p.startswith(other) for p in found), found
    if with_ort:  # its TensorRT provider links libnvinfer.so.10 + libcudart.so.13
        assert found["onnxruntime-gpu"].startswith("1.31."), found
        assert found["nvidia-cudnn-cu13"].startswith("9."), found
        assert found["nvidia-cublas"].startswith("13."), found
    else:
        assert "onnxruntime-gpu" not in found


def test_gpu_check_dry_run_fails_on_a_set_that_cannot_resolve(resolved):
    """Planted: the old ``dev`` pin (cuda-python >= 13) beside gpu-cu12, as a constraint."""
    rc, text = resolved[PLANTED]
    assert rc == 1, text[-2000:]
    assert "resolves: FAIL (" in text and "cuda-python" in text
