"""``run_batch``: a source of (image, expression) rows -> masks, on Ray Data.

    read rows (driver) -> from_items -> prepare (CPU tasks) -> PredictorWorker (actor pool,
    ``num_workers`` x ``threads`` CPUs or ``gpus_per_worker`` GPUs) -> finish (CPU tasks)
    -> iter_batches (driver) -> shards committed atomically as they complete

Ray Data schedules the stages, streams with backpressure, restarts a dead actor and retries
its task (``max_restarts=-1, max_task_retries=-1``), and retries a task whose worker died.
The driver only reads the input, skips the shards a previous run completed, and commits
each shard once all its rows are back (see :mod:`dit_deploy.batch.shards`).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import errors
from ..errors import BackendUnavailableError, DITError, InputError
from ..metrics import RISMetrics
from ..runtime.backends import backend_names, backend_row
from ..runtime.export import Export
from ..runtime.manifest import LAYOUT_ROLES
from ..runtime.throughput import worker_memory_bytes
from . import stages
from .cluster import RayInfo, connect, quiet_known_native_lines, require_ray
from .shards import (
    ERRORS_FILE,
    SUMMARY_FILE,
    BatchJobError,
    ShardPlan,
    ShardWriter,
    atomic_write,
    collect,
    done_shards,
    job_record,
    jsonl_bytes,
    open_output,
)
from .sources import SourceRows, read_source

#: rows per Ray Data input block, in batches (a block is one prepare task)
BATCHES_PER_BLOCK = 4
PROGRESS_EVERY_S = 2.0


@dataclass
class BatchOptions:
    """Everything ``dit-deploy batch`` takes (see ``dit-deploy batch --help``).

    Attributes:
        source: a ``.jsonl``/``.csv`` file of ``{"id", "image", "text"}`` rows, or
            ``NAME:SPLIT`` of a dataset under ``data`` (ground truth -> metrics).
        out: output directory (shards, ``errors.jsonl``, ``summary.json``); re-running the
            same job there resumes it.
        export: export directory (``manifest.json`` + graphs).
        threads: ONNX Runtime threads of each worker, and the CPUs each reserves in Ray.
        num_workers, batch_size, threads: ``None`` takes the throughput plan measured for
            this export on this machine (:mod:`dit_deploy.runtime.throughput`) on a local
            CPU run, and 1 worker x 1 thread, batch 8 on a cluster or GPUs.
        shard_size: input rows per output shard (the unit of atomic writes and of resume).
        ray_address: ``None`` starts an embedded Ray on 127.0.0.1 for the job; otherwise the
            cluster to join (``auto``, ``ray://head:10001``).
        progress: Ray Data's progress bars (default: when stderr is a terminal).
    """

    source: str
    out: Path
    export: Path
    data: Path | None = None
    backend: str = "onnxruntime"
    precision: str = "fp32"
    layout: str | None = None
    num_workers: int | None = 1
    batch_size: int | None = 8
    gpus_per_worker: float = 0.0
    threads: int | None = 1
    shard_size: int = 1000
    png: bool = False
    ray_address: str | None = None
    overwrite: bool = False
    progress: bool | None = None

    def __post_init__(self) -> None:
        self.out, self.export = Path(self.out), Path(self.export)
        for name in ("num_workers", "batch_size", "threads", "shard_size"):
            if getattr(self, name) is None and name != "shard_size":
                continue  # measured: see resolve_throughput
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_worker < 0:
            raise InputError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        if self.backend not in backend_names():
            raise InputError(f"unknown backend {self.backend!r}; choose from {backend_names()}")
        if "cpu" not in backend_row(self.backend).devices and self.gpus_per_worker <= 0:
            raise InputError(f"the {self.backend} backend runs on a GPU: pass --gpus-per-worker 1")

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_worker > 0 else "cpu"

    def embedded_cpus(self) -> int:
        """CPUs of the embedded Ray: the workers' threads + at least one for CPU tasks."""
        return max(os.cpu_count() or 1, self.num_workers * self.threads + 1)


def resolve_throughput(
    options: BatchOptions, layout: str, log: Callable[[str], None]
) -> tuple[BatchOptions, dict[str, Any]]:
    """Options with every ``None`` of workers/threads/batch filled, and what decided them
    (recorded in summary.json): the plan measured on this machine for a local CPU run, else
    1 x 1 thread, batch 8 (a cluster's nodes are not this machine; GPUs batch)."""
    import dataclasses

    names = ("num_workers", "threads", "batch_size")
    auto = [n for n in names if getattr(options, n) is None]
    if not auto:
        return options, {"source": "given"}
    if options.ray_address is None and options.device == "cpu":
        from ..runtime.throughput import plan_for

        plan = plan_for(options.export, options.backend, options.precision, layout, log=log)
        chosen = plan["chosen"]
        picked = {"num_workers": chosen["workers"], "threads": chosen["threads"],
                  "batch_size": chosen["batch"]}  # fmt: skip
        info = {"source": "measured on this machine", "chosen": chosen,
                "measured": plan["measured"], "created": plan["created"]}  # fmt: skip
        log(f"batch: throughput plan: {chosen['workers']} worker(s) x {chosen['threads']} "
            f"thread(s), batch {chosen['batch']} ({chosen['pairs_per_s']:.1f} pairs/s measured "
            f"{plan['created']}; dit-deploy tune shows the table)")  # fmt: skip
    else:
        picked = {"num_workers": 1, "threads": 1, "batch_size": 8}
        info = {"source": "defaults (a cluster or GPUs: not measured here)"}
    filled = dataclasses.replace(options, **{n: picked[n] for n in auto})
    return filled, {**info, "auto": auto}


def _resolve_export(options: BatchOptions) -> tuple[str, dict[str, Any]]:
    """The layout to run, and the export's part of the job record (checks the precision)."""
    export = Export.open(options.export)
    layout = export.layout(options.layout)
    roles = LAYOUT_ROLES[layout]
    graphs = {role: export.graph(role, options.precision).sha256 for role in roles}
    # the job record (and so resume) trusts these hashes: check them once, here
    export.verify(roles, options.precision)
    record = {
        "model": export.manifest.config_name,
        "precision": options.precision,
        "layout": layout,
        "graphs_sha256": graphs,
    }
    return layout, record


@dataclass
class _Timing:
    """Where a run's time went: Ray start, then the pipeline (first result = pool start)."""

    startup_s: float = 0.0
    pipeline_s: float = 0.0
    first_result_s: float | None = None

    def summary(self, rows: int) -> dict[str, float | None]:
        return {
            "startup_s": round(self.startup_s, 3),
            "pipeline_s": round(self.pipeline_s, 3),
            # the workers' start (model load) and Ray Data's read-ahead are inside this
            "first_result_s": None
            if self.first_result_s is None
            else round(self.first_result_s, 3),
            # rows segmented / pipeline time (the workers' start included, Ray's not)
            "rows_per_s": round(rows / self.pipeline_s, 2) if self.pipeline_s > 0 else None,
        }


def run_batch(options: BatchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Segment every row of ``options.source`` into ``options.out``; returns the summary.

    Raises:
        DITError: bad options, source or export (before any work), an output directory of
            another job, or a pipeline failure (completed shards are kept for a re-run).
    """
    started = time.perf_counter()
    require_ray()  # fail fast, naming the extra, when Ray Data is not installed
    layout, export_record = _resolve_export(options)
    source = read_source(options.source, options.data)  # before the throughput plan's minute
    options, throughput = resolve_throughput(options, layout, log)
    plan = ShardPlan(len(source), options.shard_size)
    job = job_record(source, options.shard_size, export_record, options.png)
    out = options.out
    open_output(out, job, options.overwrite, log)
    ids = [""] * len(source)
    for item in (*source.rows, *source.errors):
        ids[item.position] = item.id
    done = done_shards(out, plan, ids, log)
    writer = ShardWriter(out, plan, options.png)
    todo = [r for r in source.rows if plan.shard_of(r.position) not in done]
    log(
        f"batch: start: {len(source)} rows from {source.description} -> {out} "
        f"({plan.count} shards of {options.shard_size}"
        + (f"; {len(done)} done by an earlier run, resuming" if done else "")
        + f"); {options.export} {options.backend} {options.precision} {layout}, "
        f"{options.num_workers} worker(s) x batch {options.batch_size}"
    )
    for error in source.errors:
        if plan.shard_of(error.position) not in done:
            writer.add_error(error)
    ray_info: RayInfo | None = None
    timing = _Timing()
    if todo:
        ray_info = _run_pipeline(options, layout, todo, plan, writer, log, timing)
    missing = [s for s in range(plan.count) if s not in done and s not in writer.committed]
    if missing:
        raise BatchJobError(
            f"the pipeline ended without the rows of shard(s) {missing[:10]}; re-run the same "
            "command to finish them"
        )
    summary = _summarize(options, source, plan, layout, done, writer, ray_info)
    summary.update(wall_s=round(time.perf_counter() - started, 3), **timing.summary(writer.rows_ok))
    summary["throughput_plan"] = throughput
    atomic_write(out / SUMMARY_FILE, (json.dumps(summary, indent=2) + "\n").encode())
    log(
        f"batch: finished: {summary['ok']} rows segmented, {summary['errors']} errors "
        f"(-> {out / ERRORS_FILE}) in {summary['wall_s']:.1f} s"
        + (
            f" (Ray start {summary['startup_s']:.1f} s, then {summary['rows_per_s']:.1f} rows/s)"
            if summary["rows_per_s"]
            else ""
        )
        + f"; results in {out}, summary {out / SUMMARY_FILE}"
    )
    return summary


def _run_pipeline(
    options: BatchOptions,
    layout: str,
    todo: list,
    plan: ShardPlan,
    writer: ShardWriter,
    log: Callable[[str], None],
    timing: _Timing,
) -> RayInfo:
    """Build the Ray Data pipeline for ``todo`` rows and commit shards as rows come back."""
    t0 = time.perf_counter()
    ray_session = connect(options.ray_address, options.embedded_cpus(), log)
    with ray_session as info, quiet_known_native_lines():
        import ray

        startup = time.perf_counter() - t0
        log(f"batch: Ray: {info.line()} (up in {startup:.1f} s)")
        _check_fits(options, info, log)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = (
            sys.stderr.isatty() if options.progress is None else options.progress
        )
        items = [
            {
                "id": r.id,
                "position": r.position,
                "shard": plan.shard_of(r.position),
                "image": r.image,
                "text": r.text,
                "gt": r.gt,
            }
            for r in todo
        ]
        ds = build_dataset(options, layout, items)
        t1 = time.perf_counter()
        last_line = t1
        done_rows = 0
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                if timing.first_result_s is None:
                    timing.first_result_s = time.perf_counter() - t1
                for i in range(len(batch["id"])):
                    record = {k: _scalar(batch[k][i]) for k in stages.RESULT_COLUMNS}
                    done_rows += 1
                    if writer.add(record) is None:
                        continue
                    now = time.perf_counter()
                    if now - last_line >= PROGRESS_EVERY_S or done_rows == len(todo):
                        last_line = now
                        log(
                            f"batch: {len(writer.committed)} shard(s) written, "
                            f"{done_rows}/{len(todo)} rows, "
                            f"{done_rows / (now - t1):.1f} rows/s"
                        )
        except (DITError, OSError):  # ours, or the output disk: not a Ray failure
            raise
        except Exception as exc:
            raise _pipeline_error(exc) from exc
        timing.startup_s, timing.pipeline_s = startup, time.perf_counter() - t1
        return info


def _check_fits(options: BatchOptions, info: RayInfo, log: Callable[[str], None]) -> None:
    """Refuse, before any work, a job whose actor pool cannot be placed whole: Ray Data waits
    for every worker of a fixed pool, so it would wait forever ("Cluster resources are not
    enough to run any task"). Each worker takes ``--threads`` CPUs (and its GPUs), and the
    prepare/finish tasks need one more CPU."""
    n = options.num_workers
    problems = []
    gpus = n * options.gpus_per_worker
    if gpus > info.gpus:
        problems.append(
            f"{n} worker(s) x {options.gpus_per_worker:g} GPU(s) = {gpus:g} GPU(s), Ray has "
            f"{info.gpus:g}"
        )
    cpus = n * options.threads + 1
    if cpus > info.cpus:
        problems.append(
            f"{n} worker(s) x {options.threads} thread(s) + 1 CPU for the prepare/finish tasks "
            f"= {cpus} CPUs, Ray has {info.cpus:g}"
        )
    if problems:
        raise BackendUnavailableError(
            f"the job does not fit this Ray ({'; '.join(problems)}): lower --num-workers, "
            "--threads or --gpus-per-worker, or use a cluster (--ray-address) that has them"
        )


def build_dataset(options: BatchOptions, layout: str, items: list[dict[str, Any]]):
    """The Ray Data pipeline over input ``items`` (``id, position, shard, image, text, gt``):
    prepare (CPU tasks) -> PredictorWorker (actor pool) -> finish (CPU tasks)."""
    import ray

    export_dir = str(options.export.resolve())
    rows_per_block = options.batch_size * BATCHES_PER_BLOCK
    ds = ray.data.from_items(
        items, override_num_blocks=max(1, math.ceil(len(items) / rows_per_block))
    )
    ds = ds.map_batches(
        stages.prepare,
        fn_kwargs={"export_dir": export_dir},
        batch_size=options.batch_size,
        batch_format="numpy",
        num_cpus=1,
    )
    # The model's memory, reserved in Ray, also keeps the CPU stage from being fused
    # into the actors (Ray Data fuses task -> actor stages with equal resources).
    worker_memory = worker_memory_bytes(options.export, layout, options.precision)
    worker_resources: dict[str, Any] = {"num_cpus": options.threads}
    if options.gpus_per_worker > 0:
        worker_resources["num_gpus"] = options.gpus_per_worker
    ds = ds.map_batches(
        stages.PredictorWorker,
        fn_constructor_kwargs={
            "export_dir": export_dir,
            "backend": options.backend,
            "precision": options.precision,
            "layout": layout,
            "threads": options.threads,
            "batch_size": options.batch_size,
            "device": options.device,
        },
        batch_size=options.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=options.num_workers),
        # Ray Data restarts a dead actor and re-runs its batch by default
        # (max_restarts=-1, max_task_retries=-1 for actor pools)
        memory=worker_memory,
        **worker_resources,
    )
    ds = ds.map_batches(
        stages.finish,
        fn_kwargs={"export_dir": export_dir, "png": options.png},
        batch_size=options.batch_size,
        batch_format="numpy",
        num_cpus=1,
    )
    return ds


def _scalar(value: Any) -> Any:
    """numpy scalars -> Python values (bytes stay bytes)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, bytes) else value


# "dit_deploy.runtime.verified_on.PrecisionMismatchError: ..." (a traceback's last line)
_TYPED_ERROR_LINE = re.compile(
    r"^(?:(?P<module>dit_deploy(?:\.\w+)*)\.)?(?P<name>[A-Za-z]+Error): (?P<msg>.+)$"
)


def _error_class(match: re.Match) -> type | None:
    """The class a traceback line names: in its dit_deploy module, else in ``errors``."""
    module = errors
    if match["module"]:
        try:
            module = importlib.import_module(match["module"])
        except ImportError:
            return None
    return getattr(module, match["name"], None)


def _pipeline_error(exc: BaseException) -> DITError:
    """The DITError a worker raised (e.g. a bad export), else one naming the Ray failure.

    Ray keeps an exception raised in a task as its cause, but one raised in an actor's
    ``__init__`` only as text (the traceback inside ``ActorDiedError``'s message): the
    typed error is then recovered from its traceback's last line.
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DITError):
            return type(e)(f"batch worker: {e}")
        for line in reversed(str(e).splitlines()):
            match = _TYPED_ERROR_LINE.match(line.strip())
            cls = _error_class(match) if match else None
            if isinstance(cls, type) and issubclass(cls, DITError):
                return cls(f"batch worker: {match['msg']}")
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return BatchJobError(
        f"the Ray pipeline failed ({type(exc).__name__}: {first}); completed shards are "
        "kept: re-run the same command to resume"
    )


def _summarize(
    options: BatchOptions,
    source: SourceRows,
    plan: ShardPlan,
    layout: str,
    done: set[int],
    writer: ShardWriter,
    ray_info: RayInfo | None,
) -> dict[str, Any]:
    """Counts over every shard (this run's and earlier ones), metrics, ``errors.jsonl``."""
    rows, errors = collect(options.out, plan)
    atomic_write(options.out / ERRORS_FILE, jsonl_bytes(errors))
    metrics = None
    if source.has_ground_truth:
        acc = RISMetrics()
        for r in rows:
            acc.ious.append(r["iou"])
            acc.intersections.append(r["intersection"])
            acc.unions.append(r["union"])
        metrics = acc.compute()
    return {
        "source": source.description,
        "out": str(options.out),
        "rows": len(source),
        "ok": len(rows),
        "errors": len(errors),
        "rows_this_run": writer.rows_ok + writer.rows_failed,
        "shards": plan.count,
        "shards_resumed": len(done),
        "workers": options.num_workers,
        "batch_size": options.batch_size,
        "threads": options.threads,
        "gpus_per_worker": options.gpus_per_worker,
        "backend": options.backend,
        "precision": options.precision,
        "layout": layout,
        "export": str(options.export),
        "ray": asdict(ray_info) if ray_info else None,
        "metrics": metrics,
    }
