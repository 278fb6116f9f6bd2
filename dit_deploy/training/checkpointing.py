"""Checkpoints of a training run: written whole or not at all, read on rank 0 only.

``last/`` and ``best/`` are built in a temporary directory beside the target and swapped in
by :mod:`dit_deploy.artifact_dir`; files are replaced by :mod:`dit_deploy.atomic` (both with
the modes a plain ``mkdir`` / ``open`` would give). A trainer killed at any moment leaves the
old checkpoint or the new one, and what it left behind is put back or deleted by
:func:`recover_output_dir` when the next run starts.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifact_dir import clean_inner_leftovers, recover, swap_in, work_dir
from ..atomic import write_text_atomic
from ..errors import CheckpointError
from ..model.checkpoint import save_pretrained
from .distributed import DistInfo, broadcast_state

STATE_FILE = "train_state.pt"
TEST_METRICS_FILE = "test_metrics.json"
#: The checkpoint directories of an output directory.
CHECKPOINT_DIRS = ("last", "best")
#: The ``kind`` in the names of the temporary directories checkpoints are built in.
WORK_KIND = "ckpt"


def recover_output_dir(out: Path, log: Callable[[str], None] | None = None) -> list[Path]:
    """Undo what a killed trainer left in ``out``: a checkpoint renamed aside is put back,
    dead writers' temporary directories and files are deleted. Returns the paths touched."""
    touched: list[Path] = []
    for name in CHECKPOINT_DIRS:  # first: an ``.old`` one may be the only copy
        touched += recover(out / name, log)
    touched += clean_inner_leftovers(out, log)
    return touched


def write_output_text(path: Path, text: str) -> None:
    """Replace ``path`` atomically (:func:`~dit_deploy.atomic.write_text_atomic`)."""
    write_text_atomic(path, text)


def _swap_in_built(target: Path, build: Callable[[Path], None]) -> None:
    """``build(tmp)`` in a temporary directory, then make it ``target``; on failure the
    temporary directory is removed and ``target`` is left as it was."""
    tmp = work_dir(target, WORK_KIND)
    try:
        build(tmp)
        swap_in(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_checkpoint(
    out: Path,
    eval_network: nn.Module,
    vocab_file: Path | None,
    state: dict[str, Any],
) -> None:
    """``save_pretrained`` dir + ``train_state.pt`` (written to a temp dir, then swapped in)."""

    def build(tmp: Path) -> None:
        save_pretrained(eval_network, tmp, vocab_file)  # type: ignore[arg-type]
        torch.save(state, tmp / STATE_FILE)

    _swap_in_built(out, build)


def copy_checkpoint(src: Path, dst: Path) -> None:
    """Replace checkpoint directory ``dst`` by a copy of ``src`` (copied, then swapped in)."""
    _swap_in_built(dst, lambda tmp: shutil.copytree(src, tmp, dirs_exist_ok=True))


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Read ``train_state.pt`` (a checkpoint dir or the file itself) with weights_only=True."""
    p = Path(path)
    f = p / STATE_FILE if p.is_dir() else p
    if not f.is_file():
        raise CheckpointError(
            f"cannot resume: {f} does not exist (it is read on the node of rank 0 only)"
        )
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"cannot resume: {f} is not a readable train state: {exc}") from exc


def load_on_main(info: DistInfo, read: Callable[[], Any]) -> Any:
    """``read()`` on rank 0, its result broadcast to every rank (no shared disk needed).
    A :class:`CheckpointError` on rank 0 is raised on every rank."""
    state: Any = None
    if info.is_main:
        try:
            state = read()
        except CheckpointError as exc:
            state = exc
    return broadcast_state(info, state)
