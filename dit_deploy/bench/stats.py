"""Latency statistics that survive noise: warm-up, a time budget, outliers reported."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds over ``n`` timed runs; ``outliers`` = runs above Q3 + 1.5 IQR (kept)."""

    n: int
    mean: float
    std: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float
    outliers: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(seconds: list[float]) -> LatencyStats:
    """Statistics of run times in seconds (reported in ms; percentiles interpolate linearly)."""
    if not seconds:
        raise ValueError("no samples to summarise")
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    q1, q3 = np.percentile(ms, [25, 75])
    return LatencyStats(
        n=int(ms.size),
        mean=float(ms.mean()),
        std=float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        min=float(ms.min()),
        p50=float(np.percentile(ms, 50)),
        p90=float(np.percentile(ms, 90)),
        p99=float(np.percentile(ms, 99)),
        max=float(ms.max()),
        outliers=int((ms > q3 + 1.5 * (q3 - q1)).sum()),
    )


def measure(
    fn: Callable[[], object],
    *,
    warmup: int = 2,
    min_runs: int = 5,
    max_runs: int = 200,
    budget_s: float = 10.0,
    synchronize: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Run ``fn`` ``warmup`` times, then until ``budget_s`` is spent (at least ``min_runs``,
    at most ``max_runs``); the device is synchronised before each clock read."""
    sync = synchronize or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    samples: list[float] = []
    spent = 0.0
    while len(samples) < max_runs and (len(samples) < min_runs or spent < budget_s):
        start = clock()
        fn()
        sync()
        samples.append(clock() - start)
        spent += samples[-1]
    return samples


# a ratio or per-round latency whose relative spread (IQR / median over rounds) is above this
# is flagged noisy: the bar is "two runs agree within 10%"
NOISE_LIMIT = 0.10


@dataclass(frozen=True)
class Spread:
    """Median and spread of one quantity measured once per round.

    ``spread`` = (p75 - p25) / median: robust to one disturbed round, scale-free.
    """

    rounds: int
    median: float
    p25: float
    p75: float
    spread: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def spread(values: list[float]) -> Spread:
    """:class:`Spread` of per-round values (at least one)."""
    if not values:
        raise ValueError("no rounds to summarise")
    v = np.asarray(values, dtype=np.float64)
    p25, median, p75 = (float(x) for x in np.percentile(v, [25, 50, 75]))
    return Spread(int(v.size), median, p25, p75, (p75 - p25) / median if median else float("inf"))


def round_medians(rounds: list[list[float]]) -> list[float]:
    """The median run time of each round (one list of run times per round)."""
    return [float(np.median(r)) for r in rounds if r]


def round_ratios(baseline: list[float], cell: list[float]) -> list[float]:
    """Speed-up of ``cell`` over ``baseline``, round by round (both: per-round medians, same
    rounds): drift that slows one round slows both cells of that round and cancels."""
    if len(baseline) != len(cell):
        raise ValueError(f"rounds differ: baseline {len(baseline)}, cell {len(cell)}")
    return [b / c for b, c in zip(baseline, cell, strict=True)]


def noise_reasons(
    latency: Spread, ratio: Spread | None = None, limit: float = NOISE_LIMIT
) -> list[str]:
    """Why a cell's numbers cannot be trusted to ``limit`` (empty: they can).

    A cell with a speed-up is judged by the speed-up's spread (drift that hits every cell of a
    round cancels in it); the baseline, or any cell without one, by its own latency's spread.
    """
    if ratio is not None:
        if ratio.spread > limit:
            return [f"speed-up spread {ratio.spread:.0%} > {limit:.0%} over {ratio.rounds} rounds"]
        return []
    if latency.spread > limit:
        return [
            f"round-to-round latency spread {latency.spread:.0%} > {limit:.0%} "
            f"over {latency.rounds} rounds"
        ]
    return []
