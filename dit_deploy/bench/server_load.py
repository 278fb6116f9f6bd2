"""``dit-bench --server URL``: a load test of a DIT Triton server, like ``perf_analyzer``.

For each concurrency level N, N threads (each with its own connection) are released together
and send single-pair requests back to back for ``duration`` seconds. Reported per level:
requests, errors, throughput, client latency p50/p90/p99, and from Triton's Prometheus
counters (metrics port; read before and after the level) the server's average queue time,
compute time and batch size: queue vs compute shows what dynamic batching trades.
``--compare EXPORT_DIR`` runs the same pairs through an in-process Predictor with the same
threads, in the same run: the cost of serving.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..atomic import write_text_atomic
from ..errors import ConfigError
from .stats import summarize

SAMPLE_PAIRS = (
    ("chelsea.jpg", "the cat"),
    ("chelsea.jpg", "orange tabby cat on the left"),
    ("coffee.jpg", "the coffee cup"),
    ("coffee.jpg", "white cup on a saucer"),
)


def bundled_pairs() -> list[tuple[bytes, str]]:
    """(image file bytes, expression) pairs from the bundled CC0 photographs."""
    root = resources.files("dit_deploy") / "assets" / "samples"
    return [((root / name).read_bytes(), text) for name, text in SAMPLE_PAIRS]


def default_metrics_url(url: str) -> str:
    """``http://HOST:8002/metrics`` for a server at HOST (``dit-deploy serve``'s default)."""
    host = urlsplit(url if "://" in url else f"http://{url}").hostname or "127.0.0.1"
    return f"http://{host}:8002/metrics"


@dataclass
class LoadOptions:
    url: str
    concurrency: Sequence[int] = (1, 4, 16)
    duration_s: float = 20.0
    metrics_url: str | None = None
    pairs: list[tuple[bytes, str]] = field(default_factory=bundled_pairs)
    timeout_s: float = 30.0
    compare_export: Path | None = None
    threads: int | None = None

    def check(self) -> None:
        if not self.concurrency or min(self.concurrency) < 1:
            raise ConfigError(f"--concurrency needs levels >= 1; got {list(self.concurrency)}")
        if self.duration_s <= 0:
            raise ConfigError(f"--duration must be > 0; got {self.duration_s}")
        if not self.pairs:
            raise ConfigError("no (image, expression) pairs to send")


def _drive(n: int, duration_s: float, make_call: Callable[[int], Callable[[int], None]]) -> dict:
    """N threads, released together, each calling its ``call(i)`` until the deadline."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    calls = [make_call(k) for k in range(n)]  # connections are opened before the clock starts
    barrier = threading.Barrier(n + 1)
    deadline = [0.0]

    def worker(k: int) -> None:
        call, mine, failed, i = calls[k], [], {}, k
        barrier.wait()
        while time.perf_counter() < deadline[0]:
            start = time.perf_counter()
            try:
                call(i)
                mine.append(time.perf_counter() - start)
            except Exception as exc:  # counted and reported by type, the load goes on
                failed[type(exc).__name__] = failed.get(type(exc).__name__, 0) + 1
                time.sleep(0.01)
            i += n
        with lock:
            latencies.extend(mine)
            for key, count in failed.items():
                errors[key] = errors.get(key, 0) + count

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + duration_s
    started = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join(duration_s + 120)
    wall = time.perf_counter() - started
    out: dict[str, Any] = {
        "concurrency": n,
        "requests": len(latencies),
        "errors": sum(errors.values()),
        "error_types": errors,
        "wall_s": round(wall, 3),
        "throughput": len(latencies) / wall if wall > 0 else 0.0,
    }
    if latencies:
        out["latency_ms"] = summarize(latencies).to_dict()
    return out


def _server_delta(before: dict, after: dict) -> dict:
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    count, execs = d.get("count", 0.0), d.get("exec_count", 0.0)
    if count <= 0:
        return {}
    return {
        "inferences": int(count),
        "executions": int(execs),
        "avg_batch": count / execs if execs else None,
        "queue_ms": d.get("queue_duration_us", 0.0) / count / 1e3,
        "compute_ms": (
            d.get("compute_input_duration_us", 0.0)
            + d.get("compute_infer_duration_us", 0.0)
            + d.get("compute_output_duration_us", 0.0)
        )
        / count
        / 1e3,
        "request_ms": d.get("request_duration_us", 0.0) / count / 1e3,
        "failures": int(d.get("request_failure", 0.0)),
    }


def _settled_metrics(
    read: Callable[[str], dict],
    metrics_url: str,
    before: dict,
    requests: int,
    wait_s: float = 3.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """The server's counters once they cover the ``requests`` the client saw answered
    (Triton records a request's statistics after sending its response, so a read right
    after the last response can miss the last few), or as they are after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        after = read(metrics_url)
        seen = after.get("count", 0.0) - before.get("count", 0.0)
        if seen >= requests or time.monotonic() >= deadline:
            return after
        sleep(0.05)


def run_load(opts: LoadOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every concurrency level against the server (and in-process with ``compare_export``)."""
    from ..serving.client import DITClient, read_metrics
    from ..serving.contract import MASK_RLE, SCORE
    from ..serving.errors import ServerError

    opts.check()
    metrics_url = opts.metrics_url or default_metrics_url(opts.url)
    probe = DITClient(opts.url, timeout_s=opts.timeout_s)
    probe.wait_ready(timeout_s=opts.timeout_s)
    pairs = opts.pairs
    probe.infer_raw(*pairs[0], (MASK_RLE, SCORE))  # warm-up, and fail early on a bad server

    def client_call(_k: int):
        client = DITClient(opts.url, timeout_s=opts.timeout_s)
        client.outputs()

        def call(i: int) -> None:
            client.infer_raw(*pairs[i % len(pairs)], (MASK_RLE, SCORE))

        return call

    levels = []
    for n in opts.concurrency:
        log(f"server {opts.url}: concurrency {n} for {opts.duration_s:.0f} s ...")
        try:
            before = read_metrics(metrics_url)
        except ServerError as exc:
            log(f"  (no server-side split: {exc})")
            before = None
        level = _drive(n, opts.duration_s, client_call)
        level["mode"] = "served"
        if before is not None:
            after = _settled_metrics(read_metrics, metrics_url, before, level["requests"])
            level["server"] = _server_delta(before, after)
        levels.append(level)
    if opts.compare_export is not None:
        levels += _in_process(opts, log)
    return {
        "url": probe.url,
        "metrics_url": metrics_url,
        "duration_s": opts.duration_s,
        "pairs": len(pairs),
        "levels": levels,
    }


def _in_process(opts: LoadOptions, log: Callable[[str], None]) -> list[dict]:
    import io

    from PIL import Image

    from ..runtime import Predictor

    predictor = Predictor(opts.compare_export, threads=opts.threads)
    images = []
    for data, text in opts.pairs:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            images.append((im.copy(), text))
    predictor.predict(*images[0])

    def make(_k: int):
        def call(i: int) -> None:
            predictor.predict(*images[i % len(images)])

        return call

    levels = []
    for n in opts.concurrency:
        log(f"in-process {opts.compare_export}: {n} thread(s) for {opts.duration_s:.0f} s ...")
        level = _drive(n, opts.duration_s, make)
        level["mode"] = "in-process"
        levels.append(level)
    return levels


COLUMNS = (
    "mode", "conc.", "requests", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms",
    "queue ms", "compute ms", "avg batch",
)  # fmt: skip


def rows(report: dict[str, Any]) -> list[list[str]]:
    out = []
    for lv in report["levels"]:
        lat, srv = lv.get("latency_ms", {}), lv.get("server", {})

        def f(v, spec=".1f"):
            return "-" if v is None else format(v, spec)

        out.append(
            [
                lv["mode"],
                str(lv["concurrency"]),
                str(lv["requests"]),
                str(lv["errors"]),
                f(lv["throughput"]),
                f(lat.get("p50")),
                f(lat.get("p90")),
                f(lat.get("p99")),
                f(srv.get("queue_ms"), ".2f"),
                f(srv.get("compute_ms"), ".2f"),
                f(srv.get("avg_batch"), ".2f"),
            ]
        )
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(report)]
    return "\n".join(lines) + "\n"


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"DIT server load: {report['url']} ({report['duration_s']:.0f} s/level)")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col == "mode" else "right")
    for r in rows(report):
        table.add_row(*r)
    Console().print(table)


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode in ("served", "in-process"):
        lv = [x for x in report["levels"] if x["mode"] == mode and "latency_ms" in x]
        if lv:
            ax.plot([x["throughput"] for x in lv], [x["latency_ms"]["p50"] for x in lv],
                    marker="o", label=f"{mode} p50")  # fmt: skip
            for x in lv:
                ax.annotate(f"c={x['concurrency']}", (x["throughput"], x["latency_ms"]["p50"]))
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("client latency p50 (ms)")
    ax.set_title("Latency vs throughput")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_reports(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """``server_load.json``, ``server_load.md`` and ``latency_vs_throughput.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "server_load.json", out_dir / "server_load.md"]
    for path, text in zip(
        paths, (json.dumps(report, indent=2) + "\n", markdown(report)), strict=True
    ):
        write_text_atomic(path, text)
    return [*paths, plot(report, out_dir / "latency_vs_throughput.png")]
