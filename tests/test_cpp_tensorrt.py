"""The C++ TensorRT backend compiles against real TensorRT headers (``-fsyntax-only``).

CUDA's runtime headers come from PyPI (``nvidia-cuda-runtime-cu12`` and the ``crt/`` headers
of ``nvidia-cuda-nvcc-cu12``, cached like the binding wheels of ``tests/test_tensorrt_api.py``).
TensorRT's C++ headers are not published on PyPI, so those of the lowest supported 10.x and
of 11.x are vendored (``tests/fixtures/tensorrt_headers``, Apache-2.0) and every machine
compiles against both; ``DIT_TENSORRT_INCLUDE`` (directories separated by ``:``),
``$TENSORRT_ROOT/include`` or the system's add more. The sidecar rules the backend applies
are tested without TensorRT by the ctest ``test_engine_compat`` (run by
tests/test_cpp_runtime.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import pypi_reachable, skip_or_require

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("DIT_WHEEL_CACHE", Path.home() / ".cache" / "dit_deploy" / "wheels"))
CUDA_RUNTIME = "12.9.79"
# (wheel, version, which headers): the runtime API and the crt/ headers it includes
CUDA_WHEELS = (
    ("nvidia-cuda-runtime-cu12", CUDA_RUNTIME, ""),
    ("nvidia-cuda-nvcc-cu12", "12.9.86", "crt/"),
)


VENDORED = Path(__file__).parent / "fixtures" / "tensorrt_headers"


def _tensorrt_includes() -> list[Path]:
    candidates = sorted(d for d in VENDORED.iterdir() if d.is_dir())
    candidates += [Path(p) for p in os.environ.get("DIT_TENSORRT_INCLUDE", "").split(":") if p]
    if os.environ.get("TENSORRT_ROOT"):
        candidates.append(Path(os.environ["TENSORRT_ROOT"]) / "include")
    candidates += [Path("/usr/include/x86_64-linux-gnu"), Path("/usr/include")]
    found = []
    for c in candidates:
        for d in (c, c / "include"):
            if (d / "NvInfer.h").is_file() and d not in found:
                found.append(d)
    return found


def _cuda_include() -> Path:
    """CUDA 12.9's runtime headers from PyPI: ``nvidia-cuda-runtime-cu12`` plus the ``crt/``
    headers they include, from ``nvidia-cuda-nvcc-cu12``; extracted once into the cache."""
    out = CACHE / f"cuda-{CUDA_RUNTIME}-include"
    if (out / ".done").is_file():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    for name, version, wanted in CUDA_WHEELS:
        r = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--quiet", "-d", str(CACHE), f"{name}=={version}"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        wheels = sorted(CACHE.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
        if not wheels:
            if not pypi_reachable():
                pytest.skip(f"PyPI is unreachable, so {name} cannot be fetched into {CACHE}")
            pytest.fail(f"pip download {name}=={version} failed: {r.stderr[-500:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            for member in z.namelist():
                rel = member.split("/include/", 1)[-1]
                if "/include/" in member and rel.startswith(wanted) and not member.endswith("/"):
                    target = out / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(member))
        wheels[0].unlink()
    (out / ".done").write_text("")
    return out


def _version(include: Path) -> str:
    text = (include / "NvInferVersion.h").read_text()
    parts = []
    for key in ("MAJOR", "MINOR", "PATCH"):
        for line in text.splitlines():
            if line.startswith(f"#define TRT_{key}_ENTERPRISE ") or line.startswith(
                f"#define NV_TENSORRT_{key} "
            ):
                value = line.split()[2]
                if value.isdigit():
                    parts.append(value)
                    break
    return ".".join(parts)


def test_backend_tensorrt_compiles_against_tensorrt_headers():
    includes = _tensorrt_includes()
    versions = [_version(i) for i in includes]
    assert {"10.13.0", "11.1.0"} <= set(versions), versions  # the vendored pair, always
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        skip_or_require("DIT_REQUIRE_CPP", "no C++ compiler")
    json_ok = Path("/usr/include/nlohmann/json.hpp").is_file()
    if not json_ok:
        skip_or_require("DIT_REQUIRE_CPP", "no nlohmann/json.hpp (scripts/install_cpp_deps.sh)")
    cuda = _cuda_include()
    for include in includes:
        cmd = [
            cxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-DDIT_HAVE_TENSORRT=1",
            f"-I{ROOT / 'cpp' / 'include'}", f"-I{ROOT / 'cpp' / 'src'}",
            f"-isystem{include}", f"-isystem{cuda}",
            str(ROOT / "cpp" / "src" / "backend_tensorrt.cpp"),
        ]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"TensorRT {_version(include)} ({include}):\n{r.stderr[-4000:]}"
        assert "warning" not in r.stderr, r.stderr[-2000:]
