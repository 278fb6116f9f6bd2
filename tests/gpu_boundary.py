"""Run GPU tests up to the GPU, everywhere.

A test marked ``gpu`` (GPU + TensorRT) or ``cuda`` (GPU + cuda-python) is not skipped at
collection: its imports, fixtures and set-up (exports, options, Predictor arguments) run on
every machine, and it calls :func:`gpu_boundary` right before the first call that needs a
device. Where that device is missing, the boundary skips with the reason.

Where no GPU is usable, a marked test must end at the boundary. Passing is a failure (it
ran no GPU code, so it proves nothing of the GPU path), and so is skipping for another reason
before it (its set-up did not run); only a ``skip``/``skipif`` marker, a declared environment
gap, is not. A stale import or a wrong argument in a GPU test thus fails CI instead of the
first GPU user. ``tests/test_gpu_boundary.py`` plants each defect and checks it fails.
"""

from __future__ import annotations

import functools
import os

import pytest

BOUNDARY = "GPU boundary reached, set-up ran"
MARKERS = {"gpu": True, "cuda": False}  # marker -> needs TensorRT


@functools.cache
def _missing(need_tensorrt: bool) -> str | None:
    from dit_deploy.runtime.devices import gpu_unavailable_reason

    return gpu_unavailable_reason(need_tensorrt=need_tensorrt)


def gpu_boundary(need_tensorrt: bool = True) -> None:
    """Return where the device (and TensorRT when ``need_tensorrt``) is usable, else skip: the
    test's set-up ran, only the device part is left. With ``DIT_REQUIRE_GPU=1`` (set by
    scripts/gpu_check.sh) a missing piece fails instead: a GPU run must not pass by skipping."""
    reason = _missing(need_tensorrt)
    if reason is not None:
        if os.environ.get("DIT_REQUIRE_GPU") == "1":
            pytest.fail(f"DIT_REQUIRE_GPU=1 but this test cannot reach the GPU: {reason}")
        pytest.skip(f"{BOUNDARY}; needs an NVIDIA GPU: {reason}")


def _needs(item: pytest.Item) -> bool | None:
    """Whether ``item`` needs TensorRT (``gpu``), not (``cuda``), or None when unmarked."""
    for marker, need_tensorrt in MARKERS.items():
        if item.get_closest_marker(marker) is not None:
            return need_tensorrt
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    need_tensorrt = _needs(item)
    if need_tensorrt is None or _missing(need_tensorrt) is None:
        return  # unmarked, or a GPU machine: the test runs in full
    if report.when == "call" and report.passed:
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid}: marked GPU but passed without a GPU; call gpu_boundary() "
            "before its first device call"
        )
    elif report.skipped and report.when in ("setup", "call"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        reason = str(reason).removeprefix("Skipped: ")
        declared = report.when == "setup" and any(
            item.iter_markers(name) for name in ("skip", "skipif")
        )  # a whole-module environment gap, named by a marker, is not a set-up failure
        if BOUNDARY not in reason and not declared:
            report.outcome = "failed"
            report.longrepr = (
                f"{item.nodeid}: skipped before reaching the GPU boundary ({reason}); "
                "its set-up must run on every machine"
            )
