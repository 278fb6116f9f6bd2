"""The benchmark as a library call: :class:`BenchOptions` -> the report (a dict).

    report = run_bench(BenchOptions(export_dir=Path("exports/x"), all=True, batch="1,8"))

``dit-bench`` (``bench/cli.py``) turns its command line into a ``BenchOptions``; the main
job builds one directly.
"""

from __future__ import annotations

import shlex
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, ConfigError
from .cells import plan_cells
from .floors import add_distances, compute_floors
from .report import environment
from .stats import NOISE_LIMIT

DEFAULT_MODEL = "dit-tiny-synthetic"
RUNS = Path("runs") / "dit-bench"


@dataclass
class BenchOptions:
    """Everything one benchmark run needs (``dit-bench --help`` explains each option; a
    field ``x_y`` is the option ``--x-y``, ``export_dir`` the positional argument)."""

    export_dir: Path | None = None
    all: bool = False
    engine: str | None = None
    data: Path | None = None
    split: str = "val"
    limit: int = 100
    batch: str = "1,4"
    threads: int | None = None
    budget: float = 5.0
    rounds: int = 10
    noise_limit: float = NOISE_LIMIT
    pretrained: str | None = None
    checkpoint: Path | None = None
    config: str = "layer_wise_vit_b"
    text_encoder: Path | None = None
    vocab: Path | None = None
    report_dir: Path | None = None

    def command(self) -> str:
        """The ``dit-bench`` command line that repeats this run (what the report records)."""
        parts = ["dit-bench"]
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value is False or value == f.default:
                continue
            if f.name == "export_dir":
                parts.append(shlex.quote(str(value)))
            elif value is True:
                parts.append(f"--{f.name.replace('_', '-')}")
            else:
                parts += [f"--{f.name.replace('_', '-')}", shlex.quote(str(value))]
        return " ".join(parts)

    def torch_source(self, manifest_source: dict[str, Any]) -> dict[str, Any] | None:
        """The PyTorch reference: --pretrained, --checkpoint, else the export's own source."""
        if self.pretrained:
            return {"pretrained": self.pretrained}
        if self.checkpoint:
            return {
                "checkpoint": str(self.checkpoint),
                "config": self.config,
                "text_encoder": str(self.text_encoder) if self.text_encoder else None,
                "vocab": str(self.vocab) if self.vocab else None,
            }
        if "pretrained" in manifest_source:
            return {"pretrained": manifest_source["pretrained"]}
        return None

    def batches(self) -> list[int]:
        try:
            batches = sorted({int(b) for b in self.batch.split(",") if b.strip()})
        except ValueError:
            batches = []
        if not batches or batches[0] < 1:
            raise ConfigError(
                f"--batch {self.batch!r}: give comma-separated positive integers, e.g. 1,4"
            )
        return batches


def _bundled_data(input_size: int, limit: int, log: Callable[[str], None]) -> Path:
    from ..data.synthetic import generate

    out = RUNS / "data" / f"synthetic-val-{limit}-{input_size}"
    if not (out / "synthetic" / "instances.json").is_file():
        log(f"generating the bundled evaluation set ({limit} scenes) in {out} ...")
        generate(out, n_train=0, n_val=limit, seed=2024, size=input_size, overwrite=True)
    return out


def _export_dir(opts: BenchOptions, log: Callable[[str], None]) -> Path:
    """The export to benchmark: the given one, or the bundled model's (exported on first
    use); an engine run is checked for its GPU first, before any export or data work."""
    if opts.engine:
        from ..runtime.backends.table import backend_row

        reason = backend_row("tensorrt").unavailable_reason(opts.engine, "cuda")
        if reason is not None:
            raise BackendUnavailableError(
                f"--engine {opts.engine} runs a TensorRT engine, which needs an NVIDIA GPU "
                f"({reason}); run it on a GPU machine, or drop --engine for the CPU cells"
            )
    if opts.export_dir is not None:
        return opts.export_dir
    from ..exporters.onnx_export import export_pretrained

    name = opts.pretrained or DEFAULT_MODEL
    export_dir = RUNS / "exports" / name
    export_pretrained(name, export_dir, log)
    return export_dir


def _add_parity(results: list[dict[str, Any]], threshold: float) -> None:
    """Each cell's logits against the PyTorch FP32 cell's, on the same pairs."""
    from ..metrics import logits_agreement

    reference = next(
        (c.get("logits") for c in results if c["backend"] == "pytorch" and "logits" in c), None
    )
    for cell in results:
        logits = cell.pop("logits", None)
        if reference is not None and logits is not None:
            cell["parity"] = {
                "max_abs": float(np.abs(logits - reference).max()),
                "mean_abs": float(np.abs(logits - reference).mean()),
                "mask_agreement": logits_agreement(logits, reference, threshold),
            }


def run_bench(opts: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Plan the cells, run them interleaved (each in its own process), return the report."""
    from ..data import open_dataset
    from ..progress import Progress
    from ..runtime.export import Export
    from .machine import machine_load
    from .matrix import run_matrix

    batches = opts.batches()
    export_dir = _export_dir(opts, log)
    manifest = Export.open(export_dir).manifest
    data = opts.data or _bundled_data(manifest.input_size, opts.limit, log)
    dataset = open_dataset(data, opts.split)  # one clear DatasetError if it is not a dataset
    torch_source = opts.torch_source(manifest.source)
    cells = plan_cells(
        export_dir, torch_source=torch_source, all_cells=opts.all, engine=opts.engine
    )
    request = {
        "export_dir": str(export_dir),
        "model": torch_source,
        "data": {"path": str(data), "split": opts.split, "limit": opts.limit},
        "batches": batches,
        "threads": opts.threads,
        "budget_s": opts.budget,
    }
    load = machine_load()
    floors = _floors(export_dir, batches, opts.threads)
    with tempfile.TemporaryDirectory() as tmp, Progress("bench", 0) as progress:
        results, baseline = run_matrix(
            cells, request, Path(tmp), opts.rounds, opts.noise_limit, progress.describe
        )
        for cell in results:
            if "logits_file" in cell:
                cell["logits"] = np.load(cell.pop("logits_file"))
    _add_parity(results, manifest.mask_threshold)
    add_distances(results, floors)
    return {
        "model": manifest.config_name,
        "export_dir": str(export_dir),
        "command": opts.command(),
        "data": {
            "name": f"{data} ({opts.split})",
            "path": str(data),
            "pairs": min(len(dataset), opts.limit),
        },
        "batches": batches,
        "environment": environment(opts.threads) | {"load_at_start": load},
        "rounds": opts.rounds,
        "noise_limit": opts.noise_limit,
        "baseline": baseline,
        "floors": floors,
        "cells": results,
    }


def _floors(export_dir: Path, batches: list[int], threads: int | None) -> dict[str, Any]:
    """The compute floors of the export's preferred layout on this CPU (measured before the
    cells load, so on the same quiet machine they are timed on)."""
    from ..errors import DITError
    from ..runtime.export import Export

    export = Export.open(export_dir)
    graphs = [export.graph_path(role) for role in export.roles()]
    try:
        floors = compute_floors(graphs, batches, threads)
    except DITError as exc:
        floors = {"reason": str(exc)}
    return floors  # printed once, under the table (report.how_measured)
