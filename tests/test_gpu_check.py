"""``scripts/gpu_check.sh --dry-run``: prints the plan, checks the prerequisites, names every
missing piece as "not run", and writes nothing. A fake ``nvidia-smi`` stands in for a GPU
machine's driver to check the driver/CUDA-major rule and the extras' pieces."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STEPS = (
    "install", "versions", "export", "export-vit-b", "torch-cuda", "cuda-python", "engines",
    "compare", "gpu-tests", "onnxruntime-gpu", "bench", "cpp-tensorrt",
)  # fmt: skip

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not found")


def _run(
    tmp_path: Path,
    *args: str,
    gpu: tuple[str, str] | None = None,
    find_links: Path | None = None,
    **env_extra: str,
) -> tuple[int, str]:
    """Run the dry run with only /usr/bin:/bin (+ a fake nvidia-smi for ``gpu``). Without
    ``find_links`` (the stand-ins for NVIDIA's libs, tests/test_gpu_extras.py) it plans
    offline (``--no-resolve``)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for tool in ("python3", "cmake", "c++"):
        found = sys.executable if tool == "python3" else shutil.which(tool)
        if found:
            (bindir / tool).unlink(missing_ok=True)
            (bindir / tool).symlink_to(found)
    if gpu:
        name, driver = gpu
        smi = bindir / "nvidia-smi"
        smi.write_text(
            '#!/bin/sh\ncase "$*" in\n'
            f"  *driver_version*) echo '{driver}' ;;\n  *name*) echo '{name}' ;;\nesac\n"
        )
        smi.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("TENSORRT_ROOT",)}
    env["PATH"] = f"{bindir}:/usr/bin:/bin"
    if find_links is None:
        args = (*args, "--no-resolve")
    else:
        env["PIP_FIND_LINKS"] = str(find_links)
    env.update(env_extra)
    out = tmp_path / "out"
    r = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(out), *args],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    assert not out.exists(), "a dry run must write nothing"
    return r.returncode, r.stdout + r.stderr


def test_dry_run_without_gpu_names_every_step_not_run(tmp_path):
    rc, text = _run(tmp_path)
    assert rc == 0, text
    assert "GPU: none" in text and "plan (dry run" in text
    for i, step in enumerate(STEPS, 1):
        assert f"  {i}. not run: {step} (no NVIDIA GPU: nvidia-smi not found)" in text, step
    assert "report: " in text and "export/to_trt.py" in text
    assert "dit_deploy.engines.compare" in text and "-DDIT_WITH_TENSORRT=ON" in text


def test_old_driver_is_named_for_cuda_13(tmp_path):
    rc, text = _run(tmp_path, gpu=("NVIDIA H200", "575.51.03"))
    assert rc == 0
    assert "GPU: NVIDIA H200 (driver 575.51.03)" in text
    assert "not run: engines (driver 575.51.03 is older than 580, which CUDA 13 needs" in text


def test_gpu_machine_plan_names_the_pieces_it_lacks(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    args = ("--venv", str(venv), "--skip-install", "--extra", "gpu", "--no-vit-b")
    rc, text = _run(tmp_path, *args, gpu=("NVIDIA H200", "580.65.06"))
    assert rc == 0
    for step in ("install", "export", "engines", "compare", "bench", "torch-cuda"):
        assert f". ready:   {step}" in text, step
    assert "not run: export-vit-b (--no-vit-b)" in text
    assert "not run: onnxruntime-gpu (the gpu extra has no onnxruntime-gpu" in text
    if not any(Path(d, "NvInfer.h").is_file() for d in ("/usr/include/x86_64-linux-gnu",
                                                          "/usr/include")):  # fmt: skip
        assert "not run: cpp-tensorrt (" in text
    assert "--extra gpu" in text or "[torch,export,dev,gpu]" in text


def test_bad_option_is_one_line_and_exit_2(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT), "--extra", "gpu13"], capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--extra must be" in r.stderr
    r = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 0 and "--dry-run" in r.stdout and "not run" in r.stdout
