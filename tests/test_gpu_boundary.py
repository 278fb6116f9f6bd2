"""The GPU-test rule (``tests/gpu_boundary.py``), shown on planted defects: where no GPU is
usable, a ``gpu``/``cuda`` test whose set-up is broken fails instead of skipping, and only a
test that reached :func:`gpu_boundary` skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

TESTS = Path(__file__).resolve().parent

PLANTED = """
import pytest
from gpu_boundary import gpu_boundary


@pytest.mark.gpu
def test_stale_import():
    from dit_deploy.precision import trt_cli  # noqa: F401  (the module was removed)
    gpu_boundary()


@pytest.mark.cuda
def test_wrong_argument():
    from dit_deploy.runtime.devices import parse_device
    parse_device("gpu")  # a form no entry point accepts
    gpu_boundary(need_tensorrt=False)


@pytest.mark.gpu
def test_never_reaches_the_device():
    assert 1 + 1 == 2


@pytest.mark.gpu
def test_skips_before_the_boundary():
    pytest.skip("this onnxruntime has no TensorrtExecutionProvider")


@pytest.mark.gpu
def test_set_up_runs_then_stops_at_the_boundary():
    from dit_deploy.runtime.devices import parse_device
    assert parse_device("cuda:1") == ("cuda", 1)
    gpu_boundary()
    raise AssertionError("the boundary must stop here without a GPU")


@pytest.mark.skipif(True, reason="declared: needs numpy<2")
@pytest.mark.gpu
def test_declared_environment_gap():
    raise AssertionError("never runs")


def test_unmarked_tests_are_untouched():
    pytest.skip("an ordinary skip")
"""

CONFTEST = """
import gpu_boundary

gpu_boundary._missing = lambda need_tensorrt: "no NVIDIA GPU (planted)"
from gpu_boundary import pytest_runtest_makereport  # noqa: E402,F401
"""


def _run_planted(tmp_path: Path, env: dict) -> tuple[dict, subprocess.CompletedProcess]:
    """pytest on the planted file: {test name: PASSED/FAILED/SKIPPED}, and the run."""
    report = tmp_path / "report.xml"
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider",
         f"--junitxml={report}", str(tmp_path / "test_planted.py")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )  # fmt: skip
    word = {"failure": "FAILED", "error": "FAILED", "skipped": "SKIPPED"}
    outcomes = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        kinds = [word[child.tag] for child in case if child.tag in word]
        outcomes[case.get("name")] = kinds[0] if kinds else "PASSED"
    return outcomes, r


def test_planted_defects_fail_and_only_the_boundary_skips(tmp_path):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_planted.py").write_text(PLANTED)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: g\n    cuda: c\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    env.pop("DIT_REQUIRE_GPU", None)
    outcomes, r = _run_planted(tmp_path, env)
    assert outcomes == {
        "test_stale_import": "FAILED",
        "test_wrong_argument": "FAILED",
        "test_never_reaches_the_device": "FAILED",
        "test_skips_before_the_boundary": "FAILED",
        "test_set_up_runs_then_stops_at_the_boundary": "SKIPPED",
        "test_declared_environment_gap": "SKIPPED",
        "test_unmarked_tests_are_untouched": "SKIPPED",
    }, r.stdout
    assert "ImportError: cannot import name 'trt_cli'" in r.stdout
    assert "passed without a GPU; call gpu_boundary()" in r.stdout
    assert "skipped before reaching the GPU boundary (this onnxruntime has no" in r.stdout
    assert "GPU boundary reached, set-up ran; needs an NVIDIA GPU: no NVIDIA GPU (planted)" in (
        r.stdout
    )


def test_a_gpu_run_fails_instead_of_skipping_at_the_boundary(tmp_path):
    """``DIT_REQUIRE_GPU=1`` (scripts/gpu_check.sh): a GPU run must not pass by skipping."""
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_planted.py").write_text(PLANTED)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: g\n    cuda: c\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]),
           "DIT_REQUIRE_GPU": "1"}  # fmt: skip
    outcomes, r = _run_planted(tmp_path, env)
    assert outcomes["test_set_up_runs_then_stops_at_the_boundary"] == "FAILED", r.stdout
    assert "DIT_REQUIRE_GPU=1 but this test cannot reach the GPU" in r.stdout
