"""Throughput mode on a CPU: which workers x threads x batch gives the most pairs/s here.

On a CPU, throughput comes from running several model instances side by side (processes,
each with a share of the cores) rather than from big batches, and which split wins depends
on the model's size, the backend, the precision and the ISA. :func:`tune` measures the
candidates on this machine, each in its own processes started together (``workers`` x
``Predictor(threads=threads)``, ``predict_batch`` of ``batch`` decoded sample pairs, for the
same wall-clock window), and records the table and the winner as a JSON plan in the user's
cache (``$XDG_CACHE_HOME/dit_deploy/throughput``). :func:`plan_for` returns the recorded plan
when it was measured for this export (manifest sha256), backend version, precision, layout and
machine (CPU model, kernel family, cores), and otherwise measures again. ``dit-deploy batch``
and ``dit-deploy serve`` use it on CPUs when their worker/instance options are left to
``auto``; ``dit-deploy tune`` shows it.

OpenVINO's THROUGHPUT hint is the same idea inside one process (streams = parallel infer
requests on core groups); it needs callers that keep several requests in flight, which a
``Predictor`` (one synchronous call) is not, so the streams here are processes, each compiled
with the LATENCY hint over its own share of the cores.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..errors import BackendUnavailableError, InputError

SCHEMA = 1
BATCHES = (1, 8)
DEFAULT_SECONDS = 3.0
#: a worker's memory: the graphs' bytes this many times (ONNX Runtime holds the weights and
#: its prepacked copies), plus room for one batch's activations (Ray's reservation too)
WEIGHT_COPIES = 3
ACTIVATION_BYTES = 256 << 20


@dataclass(frozen=True)
class Candidate:
    """``workers`` processes of ``threads`` threads each, calling with ``batch`` pairs."""

    workers: int
    threads: int
    batch: int

    def label(self) -> str:
        return f"{self.workers} x {self.threads} thread(s), batch {self.batch}"


def candidates(cores: int, batches: Sequence[int] = BATCHES) -> list[Candidate]:
    """Workers 1, 2, 4, ... up to ``cores`` (and ``cores`` itself), each with the cores split
    evenly between them, at every batch size."""
    if cores < 1:
        raise InputError(f"cores must be >= 1, got {cores}")
    workers, w = [], 1
    while w < cores:
        workers.append(w)
        w *= 2
    workers.append(cores)
    return [Candidate(w, cores // w, b) for w in workers for b in batches]


def worker_memory_bytes(export_dir: Path, layout: str | None, precision: str) -> int:
    """Memory one Predictor worker needs: its graphs (+ external data) x ``WEIGHT_COPIES``,
    plus ``ACTIVATION_BYTES`` for a batch's activations."""
    from .export import Export
    from .manifest import LAYOUT_ROLES

    export = Export.open(export_dir)
    weights = 0
    for role in LAYOUT_ROLES[export.layout(layout)]:
        path = export.graph_path(role, precision)
        for file in (path, path.with_name(path.name + ".data")):
            weights += file.stat().st_size if file.is_file() else 0
    return WEIGHT_COPIES * weights + ACTIVATION_BYTES


def _available_bytes() -> int:
    """MemAvailable of /proc/meminfo (free pages where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _sample_rows(input_size: int, batch: int) -> list[tuple[Any, str]]:
    """``batch`` (decoded RGB image, expression) pairs cycling over the bundled samples."""
    import io

    from PIL import Image

    from ..bench.server_load import bundled_pairs
    from ..preprocess import load_image

    pairs = [(load_image(Image.open(io.BytesIO(data)), input_size=input_size), text)
             for data, text in bundled_pairs()]  # fmt: skip
    return [pairs[i % len(pairs)] for i in range(batch)]


def _worker(spec: dict, barrier, results) -> None:
    """One measuring process: load, warm up, wait for the others, call until the window
    ends (at least two calls), report (pairs, seconds)."""
    from .predictor import Predictor

    try:
        p = Predictor(spec["export"], backend=spec["backend"], precision=spec["precision"],
                      layout=spec["layout"], threads=spec["threads"],
                      max_batch=spec["batch"])  # fmt: skip
        rows = _sample_rows(p.manifest.input_size, spec["batch"])
        p.predict_batch(rows)
        barrier.wait(timeout=600)
        start, calls = time.perf_counter(), 0
        while calls < 2 or time.perf_counter() - start < spec["seconds"]:
            p.predict_batch(rows)
            calls += 1
        results.put((calls * len(rows), time.perf_counter() - start, None))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        barrier.abort()
        results.put((0, 0.0, f"{type(exc).__name__}: {exc}"))


def measure(export: Path, backend: str, precision: str, layout: str | None,
            candidate: Candidate, seconds: float) -> float:  # fmt: skip
    """Pairs/s of ``candidate``: its workers in spawned processes, started together."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(candidate.workers), ctx.Queue()
    spec = {"export": str(export), "backend": backend, "precision": precision,
            "layout": layout, "threads": candidate.threads, "batch": candidate.batch,
            "seconds": seconds}  # fmt: skip
    # numpy's BLAS (the post-processing's upsampling) gets the worker's share, as under Ray
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(candidate.threads)
    try:
        procs = [ctx.Process(target=_worker, args=(spec, barrier, results), daemon=True)
                 for _ in range(candidate.workers)]  # fmt: skip
        for proc in procs:
            proc.start()
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    got = _collect(procs, results)
    errors = [e for _, _, e in got if e]
    if errors:
        raise BackendUnavailableError(
            f"throughput measurement of {candidate.label()} failed: {errors[0]}"
        )
    return sum(n for n, _, _ in got) / max(s for _, s, _ in got)


def _collect(procs: list, results) -> list[tuple[int, float, str | None]]:
    """One result per process; a process that died without one (killed, out of memory, a
    crash while importing) is an error, not a wait."""
    import queue

    got: list[tuple[int, float, str | None]] = []
    deadline = time.monotonic() + 3600
    while len(got) < len(procs):
        try:
            got.append(results.get(timeout=1.0))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                why = f"a worker exited with code {dead[0]}" if dead else "no result in 1 h"
                got.append((0, 0.0, why))
                break
    for p in procs:
        p.join(30)
    return got


def _key(export: Path, backend: str, precision: str, layout: str | None) -> dict[str, Any]:
    """What a plan was measured for; a recorded plan is used only where all of it matches."""
    from .cpu_numerics import this_machine
    from .export import Export
    from .manifest import cached_sha256
    from .verified_on import backend_version

    opened = Export.open(export)  # not an export: the typed error naming the fix
    layout = opened.layout(layout)  # "auto" resolved: batch = serve
    for role in opened.roles(layout):  # a missing precision is named before any measuring
        opened.graph(role, precision)
    machine = this_machine()
    return {
        "schema": SCHEMA,
        "manifest_sha256": cached_sha256(Path(export) / "manifest.json"),
        "backend": backend,
        "backend_version": backend_version(backend),
        "precision": precision,
        "layout": layout,
        "kernels": machine.family,
        "cpu": machine.cpu,
        "cores": os.cpu_count() or 1,
    }


def _cache_path(key: dict[str, Any]) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    name = "-".join(str(key[k]) for k in ("backend", "precision", "layout", "kernels", "cores"))
    return Path(base) / "dit_deploy" / "throughput" / key["manifest_sha256"][:16] / f"{name}.json"


def tune(export: Path, backend: str = "onnxruntime", precision: str = "fp32",
         layout: str | None = None, seconds: float = DEFAULT_SECONDS,
         log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Measure every candidate for this machine's cores; record and return the plan:
    ``{**key, "measured": [{workers, threads, batch, pairs_per_s}], "chosen": {...},
    "seconds", "created"}``."""
    key = _key(export, backend, precision, layout)
    per_worker, room = worker_memory_bytes(export, layout, precision), _available_bytes()
    todo = candidates(key["cores"])
    table = []
    for i, cand in enumerate(todo, 1):
        if cand.workers > 1 and cand.workers * per_worker > room:
            need = cand.workers * per_worker / 2**30
            log(f"tune: [{i}/{len(todo)}] {cand.label()}: skipped, {cand.workers} workers need "
                f"{need:.1f} GiB, {room / 2**30:.1f} GiB available")  # fmt: skip
            continue
        rate = measure(Path(export), backend, precision, layout, cand, seconds)
        log(f"tune: [{i}/{len(todo)}] {cand.label()}: {rate:.1f} pairs/s")
        table.append({**asdict(cand), "pairs_per_s": round(rate, 2)})
    chosen = max(table, key=lambda row: row["pairs_per_s"])
    plan = {**key, "measured": table, "chosen": chosen, "seconds": seconds,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    path = _cache_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(plan, indent=1))
    except OSError as exc:  # the measurement still serves this run
        log(f"tune: could not record the plan in {path.parent} ({exc.strerror or exc}); it is "
            "used for this run only (XDG_CACHE_HOME chooses another cache directory)")  # fmt: skip
    return plan


def _valid_row(row: object) -> bool:
    """A plan row a run can take: positive integer workers, threads and batch."""
    return isinstance(row, dict) and all(
        isinstance(row.get(k), int) and row[k] >= 1 for k in ("workers", "threads", "batch")
    )


def recorded_plan(export: Path, backend: str = "onnxruntime", precision: str = "fp32",
                  layout: str | None = None) -> tuple[dict[str, Any] | None, str]:  # fmt: skip
    """(the recorded plan, "") when one matches this export and machine, else (None, why)."""
    key = _key(export, backend, precision, layout)
    path = _cache_path(key)
    try:
        plan = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "no plan measured for this export and machine yet"
    except (OSError, ValueError) as exc:
        return None, f"the recorded plan {path} is unreadable ({exc})"
    chosen = plan.get("chosen") if isinstance(plan, dict) else None
    if not _valid_row(chosen):
        return None, f"the recorded plan {path} is malformed (no workers/threads/batch chosen)"
    stale = [k for k, v in key.items() if plan.get(k) != v]
    if stale:
        return None, f"the recorded plan {path} was measured for another {', '.join(stale)}"
    return plan, ""


#: what a server gives up of the best measured pairs/s for fewer, wider instances (a lone
#: request then gets more cores): measured on 2 cores (AVX512-VNNI), ViT-B FP32 gave 1.56
#: pairs/s as one 2-thread instance and 1.61 as two 1-thread ones, at 637 vs 1214 ms for a
#: lone request; the bundled model 388 vs 603 pairs/s, where the two instances stay
LATENCY_TRADE = 0.05


def serving_choice(plan: dict[str, Any]) -> dict[str, Any]:
    """The measured row a server runs: the fewest workers (the most threads each) whose
    pairs/s is within :data:`LATENCY_TRADE` of the plan's best, then the highest pairs/s.
    Its ``batch`` is the batch size worth forming (1: batching lost throughput here)."""
    best = plan["chosen"]["pairs_per_s"]
    rows = [
        r
        for r in plan.get("measured", [])
        if _valid_row(r) and isinstance(r.get("pairs_per_s"), (int, float))
        and r["pairs_per_s"] >= (1 - LATENCY_TRADE) * best
    ]  # fmt: skip
    return min(rows, key=lambda r: (r["workers"], -r["pairs_per_s"]), default=plan["chosen"])


def plan_for(export: Path, backend: str = "onnxruntime", precision: str = "fp32",
             layout: str | None = None, seconds: float = DEFAULT_SECONDS,
             log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """The recorded plan for this export and machine, measured now if there is none (or the
    recorded one is for another machine, backend version or export)."""
    plan, why = recorded_plan(export, backend, precision, layout)
    if plan is not None:
        return plan
    log(f"tune: {why}; measuring workers x threads x batch on this machine "
        f"({len(candidates(os.cpu_count() or 1))} candidates, {seconds:g} s each)")  # fmt: skip
    return tune(export, backend, precision, layout, seconds, log)
