"""Random-number state of a training process: seeding, and saving / restoring every generator.

The saved form holds tensors and plain containers only, so a checkpoint stays readable with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG states as tensors / plain containers (weights_only-loadable).

    On a GPU only the generator of this process's device is saved: a resume on another
    layout (1 x 8 -> 2 x 4 GPUs) maps global rank r to whatever device it gets there.
    """
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "python": _python_state_to_plain(random.getstate()),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` saved (the CUDA generator onto ``device``)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    random.setstate(_python_state_from_plain(state["python"]))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _numpy_state_to_plain(s: tuple) -> dict[str, Any]:
    return {
        "keys": torch.from_numpy(s[1].astype(np.int64)),
        "pos": int(s[2]),
        "has_gauss": int(s[3]),
        "gauss": float(s[4]),
    }


def _numpy_state_from_plain(d: dict[str, Any]) -> tuple:
    return ("MT19937", d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["gauss"])


def _python_state_to_plain(s: tuple) -> dict[str, Any]:
    return {"version": s[0], "state": torch.tensor(s[1], dtype=torch.int64), "gauss": s[2]}


def _python_state_from_plain(d: dict[str, Any]) -> tuple:
    return (d["version"], tuple(int(v) for v in d["state"].tolist()), d["gauss"])
