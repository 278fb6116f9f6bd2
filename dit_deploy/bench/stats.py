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
