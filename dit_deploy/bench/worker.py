"""One benchmark cell, run in its own process so that threads, allocator and peak memory
are the cell's own: ``python -m dit_deploy.bench.worker request.json result.json``."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

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
            req["model"], sdpa=cell["options"].get("sdpa", False), device=cell["device"]
        )
    from .runners import RuntimeRunner

    return RuntimeRunner(
        req["export_dir"],
        cell["backend"],
        cell["device"],
        cell.get("layout"),
        cell["precision"],
        req.get("threads"),
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


def run_cell(req: dict[str, Any]) -> dict[str, Any]:
    """Cold start, latency over the batch sweep, per-stage split, accuracy, logits."""
    samples = _samples(req)
    budget = req.get("budget_s", 5.0)
    start = time.perf_counter()
    try:
        runner = _open_runner(req)
    except (BackendUnavailableError, ArtifactError) as exc:
        raise Unavailable(str(exc).replace("EXPORT_DIR", req["export_dir"])) from exc
    first = [(str(samples[0].image_path), samples[0].sentence)]
    feeds, boxes = runner.prepare(*zip(*first, strict=True))
    postprocess_batch(runner.low_res_logits(feeds), boxes, runner.threshold)
    cold_start = time.perf_counter() - start

    latency = {}
    for batch in req["batches"]:
        pairs = [(str(s.image_path), s.sentence) for s in (samples * batch)[:batch]]
        images, texts = zip(*pairs, strict=True)

        def predict(images=images, texts=texts):
            f, b = runner.prepare(images, texts)
            return postprocess_batch(runner.low_res_logits(f), b, runner.threshold)

        stats = summarize(
            measure(
                predict,
                warmup=req.get("warmup", 2),
                budget_s=budget,
                min_runs=req.get("min_runs", 5),
                synchronize=runner.synchronize,
            )
        )
        latency[str(batch)] = stats.to_dict() | {"pairs_per_s": batch / (stats.p50 / 1e3)}

    one = [str(samples[0].image_path)], [samples[0].sentence]
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
            measure(fn, warmup=1, budget_s=budget / 4, min_runs=3, synchronize=runner.synchronize)
        ).p50
        for name, fn in stages.items()
    }

    metrics, all_logits = RISMetrics(), []
    chunk = max(req["batches"])
    for i in range(0, len(samples), chunk):
        part = samples[i : i + chunk]
        feeds, boxes = runner.prepare([str(s.image_path) for s in part], [s.sentence for s in part])
        out = runner.low_res_logits(feeds)
        all_logits.append(out)
        for sample, result in zip(
            part, postprocess_batch(out, boxes, runner.threshold), strict=True
        ):
            metrics.update(result.mask, sample.mask())
    np.save(req["logits_file"], np.concatenate(all_logits))
    peak_kb = _peak_rss_kb()
    return {
        "status": "ok",
        "cold_start_s": cold_start,
        "latency": latency,
        "stages_ms": stage_ms,
        "accuracy": metrics.compute(),
        "peak_rss_mb": peak_kb / 1024.0,
        "size_mb": runner.size_mb(),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    req = json.loads(Path(args[0]).read_text())
    try:
        result = run_cell(req)
    except Unavailable as exc:
        result = {"status": "unavailable", "reason": str(exc)}
    except DITError as exc:
        result = {"status": "failed", "reason": str(exc)}
    except Exception as exc:  # reported in the table; the matrix goes on
        result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    Path(args[1]).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
