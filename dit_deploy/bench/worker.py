"""One benchmark cell, run in its own process so that threads, allocator and peak memory
are the cell's own. The process stays up and times slices when the coordinator asks
(:func:`serve`), so that the cells' timings can be interleaved round by round."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..errors import ArtifactError, BackendUnavailableError, DITError
from ..metrics import RISMetrics
from ..postprocess import postprocess_batch
from ..preprocess import preprocess_batch
from .stats import measure, summarize


class Unavailable(Exception):
    """The cell cannot run on this machine or export (not a failure)."""


def _open_runner(req: dict[str, Any]):
    cell = req["cell"]
    if cell["backend"] == "pytorch":
        import torch

        if req.get("threads"):
            torch.set_num_threads(req["threads"])
        from .runners import TorchRunner

        return TorchRunner(
            req["model"],
            sdpa=cell["options"].get("sdpa", False),
            device=cell["device"],
            autocast=cell["options"].get("autocast"),
        )
    from .runners import RuntimeRunner

    return RuntimeRunner(
        req["export_dir"],
        cell["backend"],
        cell["device"],
        cell.get("layout"),
        cell["precision"],
        req.get("threads"),
        max(req.get("batches") or [8]),
    )


def _samples(req: dict[str, Any]):
    from ..data import open_dataset

    data = req["data"]
    dataset = open_dataset(data["path"], data["split"])
    return [dataset[i] for i in range(min(len(dataset), data["limit"]))]


def _peak_rss_kb() -> int:
    """This process's high-water RSS. ``ru_maxrss`` survives ``exec`` on Linux (it would report
    the parent's peak), so read VmHWM, which belongs to the new address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class CellSession:
    """One cell, loaded once: setup (cold start, per-stage split, accuracy, logits), then
    timed slices on demand (:meth:`time`), so the coordinator can interleave cells."""

    def __init__(self, req: dict[str, Any]) -> None:
        self.req = req
        self.samples = _samples(req)
        start = time.perf_counter()
        try:
            self.runner = _open_runner(req)
        except (BackendUnavailableError, ArtifactError) as exc:
            raise Unavailable(str(exc).replace("EXPORT_DIR", req["export_dir"])) from exc
        s = self.samples[0]
        feeds, boxes = self.runner.prepare([str(s.image_path)], [s.sentence])
        postprocess_batch(self.runner.low_res_logits(feeds), boxes, self.runner.threshold)
        self.cold_start = time.perf_counter() - start
        self.calls: dict[int, Callable[[], object]] = {}
        for batch in req["batches"]:
            pairs = [(str(p.image_path), p.sentence) for p in (self.samples * batch)[:batch]]
            images, texts = zip(*pairs, strict=True)

            def predict(images=images, texts=texts):
                f, b = self.runner.prepare(images, texts)
                return postprocess_batch(self.runner.low_res_logits(f), b, self.runner.threshold)

            self.calls[batch] = predict

    def setup(self) -> dict[str, Any]:
        """Per-stage split, accuracy and logits (saved to ``logits_file``), warm-up, and the
        time of one call per batch size (to size the coordinator's slices)."""
        runner, req = self.runner, self.req
        budget = req.get("budget_s", 5.0)
        one = [str(self.samples[0].image_path)], [self.samples[0].sentence]
        feeds, boxes = runner.prepare(*one)
        logits = runner.low_res_logits(feeds)
        stages = {
            "decode+preprocess": lambda: preprocess_batch(
                one[0], runner.input_size, runner.mean, runner.std
            ),
            "tokenize": lambda: runner.tokenizer.encode_batch(one[1]),
            **runner.stages(feeds),
            "postprocess": lambda: postprocess_batch(logits, boxes, runner.threshold),
        }
        stage_ms = {
            name: summarize(
                measure(
                    fn, warmup=1, budget_s=budget / 4, min_runs=3, synchronize=runner.synchronize
                )
            ).p50
            for name, fn in stages.items()
        }
        metrics, all_logits = RISMetrics(), []
        chunk = max(req["batches"])
        for i in range(0, len(self.samples), chunk):
            part = self.samples[i : i + chunk]
            feeds, boxes = runner.prepare(
                [str(s.image_path) for s in part], [s.sentence for s in part]
            )
            out = runner.low_res_logits(feeds)
            all_logits.append(out)
            for sample, result in zip(
                part, postprocess_batch(out, boxes, runner.threshold), strict=True
            ):
                metrics.update(result.mask, sample.mask())
        np.save(req["logits_file"], np.concatenate(all_logits))
        call_s = {}
        for batch in req["batches"]:
            measure(self.calls[batch], warmup=req.get("warmup", 2), min_runs=0, max_runs=0)
            call_s[str(batch)] = min(self.time(batch, 2))
        return {
            "status": "ok",
            "cold_start_s": self.cold_start,
            "stages_ms": stage_ms,
            "accuracy": metrics.compute(),
            "size_mb": runner.size_mb(),
            "call_s": call_s,
        }

    def time(self, batch: int, runs: int) -> list[float]:
        """``runs`` timed whole calls (decode .. masks) at ``batch``, in seconds."""
        return measure(
            self.calls[batch],
            warmup=0,
            min_runs=runs,
            max_runs=runs,
            budget_s=0.0,
            synchronize=self.runner.synchronize,
        )


def _failure(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, Unavailable):
        return {"status": "unavailable", "reason": str(exc)}
    if isinstance(exc, DITError):
        return {"status": "failed", "reason": str(exc)}
    return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}


def serve(req: dict[str, Any], commands: TextIO, replies: TextIO) -> int:
    """The worker's side of the protocol, one JSON object per line.

    reply ``setup`` (or a failure, then exit); then for each command: ``{"cmd": "time",
    "batch": b, "runs": n}`` -> ``{"seconds": [...]}``; ``{"cmd": "quit"}`` ->
    ``{"peak_rss_mb": ...}`` and exit.
    """

    def reply(obj: dict[str, Any]) -> None:
        replies.write(json.dumps(obj) + "\n")
        replies.flush()

    try:
        session = CellSession(req)
        reply(session.setup())
    except Exception as exc:  # reported in the table; the matrix goes on
        reply(_failure(exc))
        return 0
    for line in commands:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        try:
            reply({"seconds": session.time(int(cmd["batch"]), int(cmd["runs"]))})
        except Exception as exc:
            reply(_failure(exc))
            return 0
    reply({"peak_rss_mb": _peak_rss_kb() / 1024.0})
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m dit_deploy.bench.worker REQUEST.json CMD_FD REPLY_FD`` (pipes from the
    coordinator; stdout/stderr stay free for libraries' own messages)."""
    args = sys.argv[1:] if argv is None else argv
    req = json.loads(Path(args[0]).read_text())
    with os.fdopen(int(args[1]), "r") as commands, os.fdopen(int(args[2]), "w") as replies:
        return serve(req, commands, replies)


if __name__ == "__main__":
    raise SystemExit(main())
