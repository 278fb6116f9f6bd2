"""The coordinator's side: one worker process per cell, set up one after another, then timed
in interleaved rounds (:mod:`.rounds`); latency, speed-ups and noise flags per batch size."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .cells import Cell
from .rounds import interleave, runs_per_slice
from .stats import noise_reasons, round_medians, round_ratios, spread, summarize


class CellFailed(Exception):
    """A worker reported a failure or died; the message is the reason."""


class WorkerCell:
    """A cell's worker process, spoken to over two pipes (one JSON object per line)."""

    def __init__(self, cell: Cell, request: dict[str, Any], workdir: Path, index: int) -> None:
        self.cell, self.label = cell, cell.label
        req_file = workdir / f"cell{index}.json"
        req_file.write_text(json.dumps(request | {"cell": cell.to_dict()}))
        self.log = workdir / f"cell{index}.log"
        cmd_r, self._cmd_w = os.pipe()
        self._reply_r, reply_w = os.pipe()
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dit_deploy.bench.worker",
                    str(req_file),
                    str(cmd_r),
                    str(reply_w),
                ],
                env=os.environ | cell.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(cmd_r, reply_w),
            )
        os.close(cmd_r)
        os.close(reply_w)
        self.commands = os.fdopen(self._cmd_w, "w")
        self.replies = os.fdopen(self._reply_r, "r")

    def _read(self) -> dict[str, Any]:
        line = self.replies.readline()
        if not line:
            code = self.proc.wait()
            tail = (self.log.read_text().strip().splitlines() or ["no output"])[-1]
            raise CellFailed(f"worker exited {code}: {tail}")
        return json.loads(line)

    def _send(self, obj: dict[str, Any]) -> None:
        try:
            self.commands.write(json.dumps(obj) + "\n")
            self.commands.flush()
        except BrokenPipeError:
            pass  # the worker is gone: _read reports why

    def setup(self) -> dict[str, Any]:
        """The worker's setup reply (``status`` ok, or unavailable/failed with a reason)."""
        try:
            return self._read()
        except CellFailed as exc:
            return {"status": "failed", "reason": str(exc)}

    def time(self, batch: int, runs: int) -> list[float]:
        self._send({"cmd": "time", "batch": batch, "runs": runs})
        reply = self._read()
        if "seconds" not in reply:
            raise CellFailed(reply.get("reason", "no timings"))
        return reply["seconds"]

    def close(self) -> dict[str, Any]:
        """Ask the worker to quit; its peak memory (empty if it is already gone)."""
        self._send({"cmd": "quit"})
        try:
            reply = self._read()
        except CellFailed:
            reply = {}
        for stream in (self.commands, self.replies):
            # BrokenPipeError: unsent bytes of a worker that is gone
            with contextlib.suppress(OSError):
                stream.close()
        self.proc.wait()
        return reply


def latency_summary(
    rounds: dict[int, list[list[float]]],
    baseline: dict[int, list[list[float]]] | None,
    batches: Sequence[int],
    limit: float,
) -> dict[str, dict[str, Any]]:
    """batch -> pooled statistics, per-round medians with their spread, the speed-up over
    ``baseline`` round by round with its spread, and the reasons the cell is noisy (if)."""
    out = {}
    for batch in batches:
        per_round = [r for r in rounds[batch] if r]
        if not per_round:
            continue
        stats = summarize([t for r in per_round for t in r])
        medians = round_medians(per_round)
        lat_spread = spread(medians)
        entry: dict[str, Any] = stats.to_dict() | {
            "pairs_per_s": batch / (stats.p50 / 1e3),
            "rounds": len(per_round),
            "round_medians_ms": [m * 1e3 for m in medians],
            "round_spread": lat_spread.spread,
        }
        ratio = None
        if baseline is not None:
            base = round_medians(baseline[batch])
            n = min(len(base), len(medians))
            if n:
                ratio = spread(round_ratios(base[:n], medians[:n]))
                entry["speedup"] = ratio.to_dict()
        entry["noisy"] = noise_reasons(lat_spread, ratio, limit)
        out[str(batch)] = entry
    return out


def run_matrix(
    cells: Sequence[Cell],
    request: dict[str, Any],
    workdir: Path,
    rounds: int,
    noise_limit: float,
    progress: Callable[[str], None] = lambda _m: None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Every cell's entry (``result`` with status, setup, latency) and the baseline label.

    Cells are set up one at a time (cold start and accuracy uncontended), kept alive, then
    timed in ``rounds`` interleaved rounds; the baseline for speed-ups is the first PyTorch
    cell that ran (else none).
    """
    entries: list[dict[str, Any]] = []
    workers: dict[str, WorkerCell] = {}
    batches = request["batches"]
    try:
        for i, cell in enumerate(cells):
            entry = cell.to_dict()
            entries.append(entry)
            if cell.reason:
                entry["result"] = {"status": "unavailable", "reason": cell.reason}
                continue
            progress(f"setting up {cell.label}")
            worker = WorkerCell(
                cell, request | {"logits_file": str(workdir / f"logits{i}.npy")}, workdir, i
            )
            entry["result"] = worker.setup()
            if entry["result"].get("status") == "ok":
                entry["logits_file"] = str(workdir / f"logits{i}.npy")
                entry["size_mb"] = entry["result"].get("size_mb")
                workers[cell.label] = worker
            else:
                worker.close()
        by_label = {e["label"]: e for e in entries}
        budget = request.get("budget_s", 5.0)

        def runs(cell: WorkerCell, batch: int) -> int:
            call_s = by_label[cell.label]["result"]["call_s"][str(batch)]
            return runs_per_slice(call_s, budget, rounds)

        def failed(cell: WorkerCell, exc: Exception) -> None:
            by_label[cell.label]["result"] = {"status": "failed", "reason": str(exc)}

        progress(f"timing {len(workers)} cells in {rounds} interleaved rounds")
        times = interleave(list(workers.values()), batches, rounds, runs, failed)
        base_label = next(
            (
                e["label"]
                for e in entries
                if e["backend"] == "pytorch" and e["result"].get("status") == "ok"
            ),
            None,
        )
        for label, worker in workers.items():
            result = by_label[label]["result"]
            if result.get("status") != "ok":
                worker.close()
                continue
            result["latency"] = latency_summary(
                times[label],
                times[base_label] if base_label and label != base_label else None,
                batches,
                noise_limit,
            )
            result["peak_rss_mb"] = worker.close().get("peak_rss_mb")
    finally:
        for worker in workers.values():
            if worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait()
    return entries, base_label
