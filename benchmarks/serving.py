"""Served against in-process, one run: what ``dit-deploy serve`` costs over the Predictor.

    .venv/bin/python benchmarks/serving.py                       # the main job's export
    .venv/bin/python benchmarks/serving.py EXPORT --duration 10 --out runs/serving
    .venv/bin/python benchmarks/serving.py runs/vit_b/export --duration 40 --rounds 1 \
        --default-policy-only --no-perf-analyzer        # ViT-B: compute-bound requests

On one machine, in one run, alternating in-process and served rounds:

- in-process: one ``Predictor`` with every core, one request at a time (latency, p50), and
  one ``Predictor`` of 1 thread per core, as many callers as cores, in one process; once
  more encoding the mask as the server must (PNG and RLE: the server's ensemble always
  produces every output of the contract); and one single-thread ``Predictor`` process per
  core (no shared GIL, like the server's instances) calling with batches of 1, 4 and 8. The
  ratio's base is the best in-process figure with at most 8 pairs in flight (what 8 clients
  give a server); batch 8 on every core needs 16 and is shown beside it;
- served: ``dit-deploy serve`` with its default batching policy, driven over gRPC by the
  load generator of ``dit-bench --server`` at concurrency 1 and 8 (p50, throughput), and by
  NVIDIA's perf_analyzer (``.venv/bin/perf_analyzer``, scripts/install_perf_analyzer.sh) over
  gRPC and HTTP at concurrency 1, 2, 4 and 8 on the file ``dit-deploy perf-data`` writes for
  the same pairs (``--no-perf-analyzer`` leaves it out);
- policies: the same server with ``--instances 1`` (every core per request) and with a
  2 ms queue delay, at the same concurrencies.

Every request decodes its image from the file's bytes, in process as in the server. The
clients run on the same machine as the server (they cost CPU too: the served numbers are a
lower bound). Prints a Markdown table (docs/benchmarks.md, "Serving") and writes JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROCESS_BATCHES = (1, 4, 8)


def _in_process(export: Path, seconds: float, encode: bool = False) -> dict:
    from PIL import Image

    from dit_deploy.bench.server_load import bundled_pairs
    from dit_deploy.mask_codec import encode_png, rle_json
    from dit_deploy.runtime import Predictor

    pairs = bundled_pairs()
    cores = os.cpu_count() or 1

    def call(p, i):
        data, text = pairs[i % len(pairs)]
        result = p.predict(Image.open(io.BytesIO(data)), text)
        if encode:  # what the server sends back: every output of the contract
            encode_png(result.mask), rle_json(result.mask)

    one = Predictor(export, threads=cores)
    for i in range(5):
        call(one, i)
    latencies, i, stop = [], 0, time.perf_counter() + seconds
    while time.perf_counter() < stop:
        t = time.perf_counter()
        call(one, i)
        latencies.append((time.perf_counter() - t) * 1e3)
        i += 1
    workers = [Predictor(export, threads=1) for _ in range(cores)]
    counts = [0] * cores
    stop = time.perf_counter() + seconds

    def work(k: int) -> None:
        while time.perf_counter() < stop:
            call(workers[k], counts[k])
            counts[k] += 1

    threads = [threading.Thread(target=work, args=(k,)) for k in range(cores)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "p50_ms": statistics.median(latencies),
        "single_stream_rps": 1e3 / statistics.mean(latencies),
        "best_rps": sum(counts) / (time.perf_counter() - start),
    }


def _proc_worker(export: str, seconds: float, batch: int, barrier, results) -> None:
    """One process of :func:`_in_processes`: decode + predict ``batch`` pairs per call."""
    from PIL import Image

    from dit_deploy.bench.server_load import bundled_pairs
    from dit_deploy.runtime import Predictor

    pairs = bundled_pairs()
    p = Predictor(export, threads=1, max_batch=batch)

    def call(i: int) -> None:
        rows = [pairs[(i + k) % len(pairs)] for k in range(batch)]
        p.predict_batch([(Image.open(io.BytesIO(data)), text) for data, text in rows])

    call(0)
    barrier.wait()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        call(n)
        n += 1
    results.put((n * batch, time.perf_counter() - start))


def _in_processes(export: Path, seconds: float, batch: int) -> float:
    """Pairs/s of one single-thread Predictor process per core, each decoding its images and
    calling with ``batch`` pairs (no GIL shared, as the server's instances)."""
    import multiprocessing as mp

    ctx, cores = mp.get_context("spawn"), os.cpu_count() or 1
    barrier, results = ctx.Barrier(cores), ctx.Queue()
    os.environ["OMP_NUM_THREADS"] = "1"
    procs = [ctx.Process(target=_proc_worker, args=(str(export), seconds, batch, barrier, results))
             for _ in range(cores)]  # fmt: skip
    for proc in procs:
        proc.start()
    got = [results.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(30)
    return sum(n for n, _ in got) / max(s for _, s in got)


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start(export: Path, extra: list[str], log_dir: Path):
    """``dit-deploy serve`` on free ports, ready; (process, http, grpc, metrics ports)."""
    from dit_deploy.serving.client import DITClient

    http, grpc, metrics = _free_ports(3)
    argv = [sys.executable, "-m", "dit_deploy.cli", "serve", str(export),
            "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
            *extra]  # fmt: skip
    with open(log_dir / f"serve-{http}.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    ready, deadline = DITClient(f"http://127.0.0.1:{http}", timeout_s=5), time.time() + 180
    while not ready.is_ready():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise SystemExit(f"serve did not start; see {log_dir / f'serve-{http}.log'}")
        time.sleep(0.3)
    return proc, http, grpc, metrics


def _stop(proc: subprocess.Popen) -> None:
    import signal

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def _dit_bench(grpc: int, metrics: int, seconds: float) -> dict:
    """``dit-bench --server``'s load generator at concurrency 1 and 8."""
    from dit_deploy.bench import server_load

    opts = server_load.LoadOptions(
        url=f"grpc://127.0.0.1:{grpc}", concurrency=[1, 8], duration_s=seconds,
        metrics_url=f"http://127.0.0.1:{metrics}/metrics",
    )  # fmt: skip
    report = server_load.run_load(opts, log=lambda *_: None)
    out = {}
    for level in report["levels"]:
        n = level["concurrency"]
        out[f"c{n}_p50_ms"] = level["latency_ms"]["p50"]
        out[f"c{n}_rps"] = level["throughput"]
        out[f"c{n}_batch"] = level["server"].get("avg_batch")
        out[f"c{n}_errors"] = level["errors"]
    return out


def _pipeline_counts(http: int) -> tuple[int, int]:
    """(inferences, executions) of the served python model, from the statistics API."""
    import urllib.request

    url = f"http://127.0.0.1:{http}/v2/models/dit_pipeline/stats"
    with urllib.request.urlopen(url, timeout=10) as r:
        stats = json.loads(r.read())["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def _perf_analyzer(binary: str, data: Path, ports: tuple[int, int], seconds: float) -> dict:
    """perf_analyzer over gRPC and HTTP, one invocation per concurrency level (the batch
    size formed is read from the statistics API around it)."""
    out: dict = {}
    http = ports[0]
    for protocol, port in (("grpc", ports[1]), ("http", ports[0])):
        for n in (1, 2, 4, 8):
            csv = data.with_suffix(f".{protocol}{n}.csv")
            before = _pipeline_counts(http)
            argv = [binary, "-m", "dit", "-u", f"127.0.0.1:{port}", "-i", protocol,
                    "--input-data", str(data), "--concurrency-range", f"{n}:{n}",
                    "--measurement-interval", str(int(seconds * 1000 / 2)),
                    "--stability-percentage", "15", "--max-trials", "10",
                    "-f", str(csv)]  # fmt: skip
            for _ in range(2):  # exit 2: no 3 windows within 15% of each other (a noisy CPU)
                done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
                if done.returncode != 2:
                    break
            if done.returncode != 0:
                raise SystemExit(f"perf_analyzer failed ({done.returncode}): {done.stdout[-800:]}")
            after = _pipeline_counts(http)
            header, row = csv.read_text().splitlines()[:2]
            cell = dict(zip(header.split(","), row.split(","), strict=True))
            key = f"pa_{protocol}_c{n}"
            out[f"{key}_rps"] = float(cell["Inferences/Second"])
            out[f"{key}_p50_ms"] = float(cell["p50 latency"]) / 1e3
            execs = after[1] - before[1]
            out[f"{key}_batch"] = (after[0] - before[0]) / execs if execs else None
    return out


def _round(args, policies: dict, pa: str | None, data: Path, rounds: dict) -> None:
    rounds["in-process"].append(_in_process(args.export, args.duration))
    rounds["in-process + encode"].append(_in_process(args.export, args.duration, True))
    for batch in PROCESS_BATCHES:
        rate = _in_processes(args.export, args.duration, batch)
        rounds[f"processes, batch {batch}"].append({"best_rps": rate})
    for name, extra in policies.items():
        proc, http, grpc, metrics = _start(args.export, extra, args.out)
        try:
            row = _dit_bench(grpc, metrics, args.duration)
            if pa and name == "default":
                row |= _perf_analyzer(pa, data, (http, grpc), args.duration)
        finally:
            _stop(proc)
        rounds[name].append(row)


def _table(result: dict, policies: dict, with_pa: bool) -> list[str]:
    inproc, enc = result["in-process"], result["in-process + encode"]
    procs = {b: result[f"processes, batch {b}"]["best_rps"] for b in PROCESS_BATCHES}
    # what 8 clients can have in flight: 2 threads x 1 pair, 1 process per core x batch b
    # while cores x b <= 8; batch 8 on every core needs 16 pairs in flight (shown, apart)
    cores = os.cpu_count() or 1
    best = max(inproc["best_rps"], *(r for b, r in procs.items() if cores * b <= 8))
    lines = [
        "| | c1 p50 ms | c1 p50 - in-process | c8 req/s | c8 / best in-process (8 in flight) "
        "| c8 batch |",
        "|---|---|---|---|---|---|",
        f"| in-process, 1 thread per core in one process | {inproc['p50_ms']:.1f} | | "
        f"{inproc['best_rps']:.0f} | {inproc['best_rps'] / best:.2f} | |",
        *(
            f"| in-process, 1 process per core, batch {b} ({cores * b} in flight) | | | "
            f"{procs[b]:.0f} | {procs[b] / best:.2f} | |"
            for b in PROCESS_BATCHES
        ),  # fmt: skip
        f"| in-process + PNG/RLE encoding | {enc['p50_ms']:.1f} | "
        f"{enc['p50_ms'] - inproc['p50_ms']:+.1f} | {enc['best_rps']:.0f} | "
        f"{enc['best_rps'] / best:.2f} | |",
    ]
    for name in policies:
        s = result[name]
        lines.append(
            f"| serve, {name} (dit-bench) | {s['c1_p50_ms']:.1f} | "
            f"{s['c1_p50_ms'] - inproc['p50_ms']:+.1f} | {s['c8_rps']:.0f} | "
            f"{s['c8_rps'] / best:.2f} | {s['c8_batch']:.2f} |"
        )
        for protocol in ("grpc", "http") if with_pa and name == "default" else ():
            k = f"pa_{protocol}"
            lines.append(
                f"| serve, {name} (perf_analyzer {protocol}) | {s[f'{k}_c1_p50_ms']:.1f} | "
                f"{s[f'{k}_c1_p50_ms'] - inproc['p50_ms']:+.1f} | {s[f'{k}_c8_rps']:.0f} | "
                f"{s[f'{k}_c8_rps'] / best:.2f} | {s[f'{k}_c8_batch']:.2f} |"
            )
    if with_pa:
        s = result["default"]
        lines += ["", "perf_analyzer against serve (default policy): req/s, p50 ms, avg batch",
                  "", "| concurrency | gRPC req/s | gRPC p50 | gRPC batch | HTTP req/s | HTTP p50 "
                  "| HTTP batch |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for n in (1, 2, 4, 8):
            cells = [f"{s[f'pa_{p}_c{n}_rps']:.0f} | {s[f'pa_{p}_c{n}_p50_ms']:.1f} | "
                     f"{s[f'pa_{p}_c{n}_batch']:.2f}" for p in ("grpc", "http")]  # fmt: skip
            lines.append(f"| {n} | {cells[0]} | {cells[1]} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    import shutil

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("export", type=Path, nargs="?", default=ROOT / "runs" / "dit-deploy" / "export")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (medians kept)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "serving")
    p.add_argument("--no-perf-analyzer", action="store_true", help="leave perf_analyzer out")
    p.add_argument(
        "--default-policy-only",
        action="store_true",
        help="serve only with its default batching policy (large models: each policy is a "
        "server start and two measurements)",
    )
    args = p.parse_args(argv)
    if args.duration <= 0 or args.rounds < 1:
        p.error("--duration must be > 0 and --rounds >= 1")
    if not (args.export / "manifest.json").is_file():
        p.error(f"no export at {args.export}; run the main job first (dit-deploy)")
    pa = None
    if not args.no_perf_analyzer:
        pa = shutil.which("perf_analyzer", path=f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}")
        if pa is None:
            p.error("perf_analyzer not found: bash scripts/install_perf_analyzer.sh "
                    "(or --no-perf-analyzer)")  # fmt: skip
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        probe = args.out / ".writable"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        p.error(f"--out {args.out}: cannot write there ({exc.strerror or exc})")
    from dit_deploy.bench.server_load import bundled_pairs
    from dit_deploy.serving.perf_data import write_perf_input_data

    data = write_perf_input_data(bundled_pairs(), args.out / "perf_data.json")
    load = os.getloadavg()[0]
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    flags = Path("/proc/cpuinfo").read_text()
    kind = "AVX512-VNNI" if "avx512_vnni" in flags else "AVX2" if "avx2" in flags else "other"
    policies = {"default": [], "--instances 1": ["--instances", "1"],
                "2 ms delay": ["--max-queue-delay-us", "2000"]}  # fmt: skip
    if args.default_policy_only:
        policies = {"default": []}
    names = ("in-process", "in-process + encode", *(f"processes, batch {b}"
                                                     for b in PROCESS_BATCHES))  # fmt: skip
    rounds: dict[str, list[dict]] = {k: [] for k in names}
    rounds.update({k: [] for k in policies})
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", flush=True)
        _round(args, policies, pa, data, rounds)

    def med(rows: list[dict]) -> dict:
        return {k: statistics.median(r[k] for r in rows if r.get(k) is not None)
                for k in rows[0] if any(r.get(k) is not None for r in rows)}  # fmt: skip

    result = {name: med(rows) for name, rows in rounds.items()}
    lines = [
        f"machine: {cpu} ({kind}), {os.cpu_count()} cores, load {load:.2f} at the start; "
        f"{args.rounds} alternating rounds of {args.duration:g} s, medians",
        "",
        *_table(result, policies, pa is not None),
    ]
    print("\n".join(lines))
    (args.out / "serving.json").write_text(
        json.dumps({"cpu": cpu, "kind": kind, "load": load, "result": result}, indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
