"""How busy the machine is: load averages and the processes using CPU (Linux ``/proc``), so a
report says what its latencies were measured under."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BUSY_PCT = 10.0  # a process using more than this share of one core counts as busy


def _cpu_ticks(proc: Path = Path("/proc")) -> dict[int, tuple[str, int]]:
    """pid -> (command name, user+system clock ticks so far)."""
    ticks = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone, or not ours to read
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks[int(entry.name)] = (name, int(fields[11]) + int(fields[12]))
    return ticks


def busy_processes(
    before: dict[int, tuple[str, int]],
    after: dict[int, tuple[str, int]],
    seconds: float,
    hz: float,
    exclude: set[int],
    threshold: float = BUSY_PCT,
) -> list[dict[str, Any]]:
    """Processes above ``threshold`` % of one core between two :func:`_cpu_ticks` samples."""
    busy = []
    for pid, (name, ticks) in after.items():
        if pid in exclude or pid not in before:
            continue
        pct = 100.0 * (ticks - before[pid][1]) / hz / seconds
        if pct > threshold:
            busy.append({"pid": pid, "name": name, "cpu_pct": round(pct, 1)})
    return sorted(busy, key=lambda p: -p["cpu_pct"])


def machine_load(
    sample_s: float = 1.0, sleep: Callable[[float], None] = time.sleep
) -> dict[str, Any]:
    """Load averages (1/5/15 min), cores, and the other processes busy during ``sample_s``;
    ``quiet`` when the 1-minute load is under a quarter of the cores and nothing else is busy."""
    cores = os.cpu_count() or 1
    load = list(os.getloadavg())
    busy: list[dict[str, Any]] = []
    if Path("/proc/self/stat").is_file():
        hz = float(os.sysconf("SC_CLK_TCK"))
        before = _cpu_ticks()
        sleep(sample_s)
        busy = busy_processes(before, _cpu_ticks(), sample_s, hz, {os.getpid()})
    return {
        "loadavg": [round(v, 2) for v in load],
        "cores": cores,
        "busy_processes": busy,
        "quiet": load[0] < 0.25 * cores and not busy,
    }


def describe(load: dict[str, Any]) -> str:
    """One line: 'load 2.31/1.20/0.52 on 2 cores; busy: python (pid 12, 95%)'."""
    text = "load {:.2f}/{:.2f}/{:.2f} (1/5/15 min) on {} cores".format(
        *load["loadavg"], load["cores"]
    )
    if load["busy_processes"]:
        text += "; busy: " + ", ".join(
            f"{p['name']} (pid {p['pid']}, {p['cpu_pct']:.0f}%)" for p in load["busy_processes"][:5]
        )
    if not load["quiet"]:
        text += (
            " -- NOT a quiet machine: absolute times are inflated; "
            "ratios come from interleaved rounds"
        )
    return text
