"""Interleaved rounds: every cell runs a slice in every round (A B C, A B C, ...), so that
slow drift of the machine (other jobs, thermal or frequency changes) hits every cell alike and
per-round ratios cancel it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

SETTLE_S = 0.02  # pause between slices: the previous cell's idle threads stop spinning


class TimedCell(Protocol):
    label: str

    def time(self, batch: int, runs: int) -> list[float]:
        """``runs`` timed calls at ``batch``; their wall times in seconds."""
        ...


def runs_per_slice(call_s: float, budget_s: float, rounds: int, cap: int = 50) -> int:
    """Calls per slice so that ``rounds`` slices spend about ``budget_s`` (at least one)."""
    if call_s <= 0:
        return cap
    return max(1, min(cap, round(budget_s / rounds / call_s)))


def interleave(
    cells: Sequence[TimedCell],
    batches: Sequence[int],
    rounds: int,
    runs: Callable[[TimedCell, int], int],
    on_failure: Callable[[TimedCell, Exception], None] | None = None,
    settle_s: float = SETTLE_S,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, dict[int, list[list[float]]]]:
    """Run ``rounds`` rounds; in each, every batch size, and for it every cell in order.

    Returns label -> batch -> one list of run times per round. A cell that raises is
    reported to ``on_failure`` and left out of later slices (its rounds stay incomplete).
    """
    times: dict[str, dict[int, list[list[float]]]] = {
        c.label: {b: [] for b in batches} for c in cells
    }
    live = list(cells)
    for _ in range(rounds):
        for batch in batches:
            for cell in list(live):
                sleep(settle_s)
                try:
                    times[cell.label][batch].append(cell.time(batch, runs(cell, batch)))
                except Exception as exc:  # the matrix goes on; the cell is reported failed
                    live.remove(cell)
                    if on_failure is None:
                        raise
                    on_failure(cell, exc)
    return times
