"""``dit-deploy serve EXPORT_DIR``: the export behind a real Triton Inference Server.

``serve`` writes the python-backend repository of ``dit-deploy triton-repo --backend python``
(one model ``dit``, :class:`~.triton_models.Pipeline`, reading the export in place) and runs
the ``tritonserver`` binary that PyTriton's wheel bundles on it: KServe v2 over HTTP and gRPC,
Prometheus metrics, dynamic batching, the statistics API. So ``serve`` and a generated
repository are one deployment with one contract: a bad request is Triton's own error
(HTTP 400 / gRPC INVALID_ARGUMENT) for that request alone, which PyTriton's own model
binding cannot do (an error there fails every request of the batch).

Readiness is strict (``/v2/health/ready`` turns true once ``dit`` is loaded); SIGTERM and
Ctrl-C stop accepting work, let in-flight requests finish (up to ``drain_s``), then exit 0.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BackendUnavailableError, ConfigError
from . import contract as c

if TYPE_CHECKING:
    from ..runtime import Export

START_TIMEOUT_S = 600  # a ViT-B INT8 session on 2 cores takes tens of seconds to load


@dataclass(frozen=True)
class BatchingPolicy:
    """How Triton schedules ``dit`` on a device, and why (printed at start)."""

    instances: int
    threads: int | None  # CPU threads per instance (None: the runtime's own)
    max_queue_delay_us: int
    why: str
    #: 1: Triton executes one request at a time per instance (batching measured slower)
    preferred_batch: int | None = None


def batching_policy(device: str, cores: int | None = None) -> BatchingPolicy:
    """The default per device, from measurement (docs/benchmarks.md, "Serving").

    CPU: one instance per core, one thread each, no queue delay. Measured on 2 cores (the
    bundled model, 8 concurrent clients): 360 requests/s against 234 for one instance of 2
    threads, whose batches of 4 bought nothing; a queue delay only adds to every request's
    latency (1 ms at concurrency 1). This is the default without a throughput plan; with
    one, :meth:`ServeOptions.policy` takes its serving row (on a big model: one instance
    with every core, unbatched, whose lone requests take half the time). GPU (Triton's usual
    advice, not yet measured here): two instances (one copies while the other computes) and
    a short delay, so concurrent requests meet in one batch.
    """
    if device == "cpu":
        n = cores or os.cpu_count() or 1
        return BatchingPolicy(n, 1, 0, f"CPU: {n} instance(s) x 1 thread, no queue delay")
    return BatchingPolicy(
        2, None, 2000, "GPU: 2 instances, 2 ms queue delay to form batches (not yet measured)"
    )


@dataclass
class ServeOptions:
    """Everything ``dit-deploy serve`` needs; checked by :meth:`check` before any work.

    ``instances``, ``threads`` and ``max_queue_delay_us`` left None take
    :func:`batching_policy`'s value for the device.
    """

    export_dir: Path
    backend: str = "onnxruntime"
    precision: str = "fp32"
    device: str = "cpu"
    layout: str | None = None
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 8
    max_queue_delay_us: int | None = None
    instances: int | None = None
    threads: int | None = None
    max_pixels: int = c.SERVE_MAX_PIXELS
    max_image_bytes: int = c.MAX_IMAGE_BYTES
    drain_s: int = 20
    log_file: Path | None = None
    api_token: str | None = None

    def check(self) -> None:
        from ..runtime.backends import backend_names, backend_row
        from ..runtime.devices import parse_device

        ports = {"http": self.http_port, "grpc": self.grpc_port, "metrics": self.metrics_port}
        if len(set(ports.values())) != 3:
            raise ConfigError(f"ports must differ; got {ports}")
        if self.backend not in backend_names():
            raise ConfigError(f"--backend must be one of {backend_names()}; got {self.backend!r}")
        kind, _ = parse_device(self.device)
        if kind == "tensorrt":
            raise ConfigError("--device takes cpu, cuda or cuda:N (the backend picks TensorRT)")
        row = backend_row(self.backend)
        if kind not in row.devices:
            raise ConfigError(
                f"--backend {self.backend} runs on {' or '.join(row.devices)}, not "
                f"{self.device}: add --device {row.default_device} (or leave --device out)"
            )
        for name, value in (
            ("max_batch", self.max_batch),
            ("instances", self.instances),
            ("threads", self.threads),
            ("drain_s", self.drain_s),
            ("max_pixels", self.max_pixels),
            ("max_image_bytes", self.max_image_bytes),
        ):
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1; got {value}")
        if self.max_queue_delay_us is not None and self.max_queue_delay_us < 0:
            raise ConfigError(f"--max-queue-delay-us must be >= 0; got {self.max_queue_delay_us}")
        if self.api_token is not None and not self.api_token.strip():
            raise ConfigError("--api-token is empty; give a secret, or leave the option out")

    def policy(self) -> BatchingPolicy:
        """The batching policy with this command line's overrides applied; on a CPU with
        neither ``instances`` nor ``threads`` given, the throughput plan recorded for this
        export on this machine (``dit-deploy tune``) where there is one."""
        base = batching_policy("cpu" if self.device == "cpu" else "cuda")
        if self.device == "cpu" and self.instances is None and self.threads is None:
            base = self._measured(base)
        instances = self.instances or base.instances
        threads = self.threads
        if threads is None and self.device == "cpu":
            threads = (
                base.threads
                if self.instances is None
                else max(1, (os.cpu_count() or 1) // instances)
            )
        delay = (
            base.max_queue_delay_us
            if self.max_queue_delay_us is None
            else (self.max_queue_delay_us)
        )
        overridden = (self.instances, self.threads, self.max_queue_delay_us) != (None,) * 3
        why = "from the command line" if overridden else base.why
        return BatchingPolicy(instances, threads, delay, why, base.preferred_batch)

    def _measured(self, base: BatchingPolicy) -> BatchingPolicy:
        from ..runtime.throughput import recorded_plan, serving_choice

        plan, why = recorded_plan(self.export_dir, self.backend, self.precision, self.layout)
        if plan is None:
            return BatchingPolicy(
                base.instances, base.threads, base.max_queue_delay_us,
                f"{base.why} ({why}: `dit-deploy tune {self.export_dir}` measures it)",
            )  # fmt: skip
        row = serving_choice(plan)
        w, t, b = row["workers"], row["threads"], row["batch"]
        unbatched = ", one request per execution" if b == 1 else ""
        return BatchingPolicy(
            w, t, 0, f"CPU: {w} instance(s) x {t} thread(s), no queue delay{unbatched}: the "
            f"throughput plan measured on this machine ({row['pairs_per_s']:.1f} pairs/s; "
            f"best {plan['chosen']['pairs_per_s']:.1f}, {plan['created']})",
            preferred_batch=1 if b == 1 else None,
        )  # fmt: skip


def check_python_backend() -> None:
    """Refuse early what would make the python-backend stub fail at run time."""
    if int(np.__version__.split(".")[0]) >= 2:
        raise BackendUnavailableError(
            f"PyTriton 0.7's python-backend stub is built for the NumPy 1.x ABI, and this "
            f"environment has numpy {np.__version__} (outputs come back empty); install "
            "'numpy<2' (what nvidia-pytriton itself requires): pip install 'numpy<2'"
        )
    try:
        import pytriton  # noqa: F401
    except ModuleNotFoundError:
        raise BackendUnavailableError(
            "PyTriton is not installed; install the serve extra: pip install 'dit-deploy[serve]'"
        ) from None


def _check_port_free(host: str, port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} for {what} ({exc.strerror}); pick a free port "
                f"with --{what}-port"
            ) from None


def urls(opts: ServeOptions) -> dict[str, str]:
    """The server's endpoints as a client uses them."""
    return {
        "http": f"http://{opts.host}:{opts.http_port}",
        "grpc": f"grpc://{opts.host}:{opts.grpc_port}",
        "metrics": f"http://{opts.host}:{opts.metrics_port}/metrics",
    }


# the python backend's shared-memory regions (tmpfs: RAM) of a serve process are named
# ``<SHM_PREFIX><its pid>_...``: a SIGKILL leaves them behind, the next serve removes them
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "dit_deploy_serve_"


def shm_prefix(pid: int | None = None) -> str:
    """The python backend's region prefix of the serve process ``pid`` (default: this one)."""
    return f"{SHM_PREFIX}{pid or os.getpid()}_"


def public_bind_warning(opts: ServeOptions) -> str | None:
    """What to say when the server listens beyond this machine with its APIs open."""
    if opts.api_token or _loopback(opts.host):
        return None
    return (
        f"listening on {opts.host} with Triton's statistics, repository, trace and logging "
        "APIs open to every client that reaches it; pass --api-token SECRET to restrict them"
    )


def _loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def remove_stale_shm(directory: Path = SHM_DIR, own: bool = False) -> int:
    """Remove the regions of serve processes that are gone (``own``: this process's too,
    once its tritonserver has exited); returns how many were removed."""
    removed = 0
    for path in directory.glob(f"{SHM_PREFIX}*"):
        pid = path.name[len(SHM_PREFIX) :].split("_", 1)[0]
        if not pid.isdigit():
            continue
        mine = int(pid) == os.getpid()
        if own if mine else not _alive(int(pid)):
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


def tritonserver_args(opts: ServeOptions, repo: Path, log_file: Path) -> list[str]:
    """tritonserver's arguments after the binary and ``--backend-directory``.

    On a loopback bind every API is open (perf_analyzer, ``/v2/models/stats``,
    ``/v2/repository/index`` need no secret). ``--api-token`` restricts the statistics,
    repository, trace and logging APIs to requests carrying header ``dit-api-token``: set it
    for a public bind, and pass it to perf_analyzer with ``-H dit-api-token:SECRET``.
    """
    args = [f"--model-repository={repo}", "--strict-readiness=true",
            f"--exit-timeout-secs={opts.drain_s}", f"--log-file={log_file}",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix()}"]  # fmt: skip
    for name, port in (("http", opts.http_port), ("grpc", opts.grpc_port),
                       ("metrics", opts.metrics_port)):  # fmt: skip
        args += [f"--{name}-address={opts.host}", f"--{name}-port={port}"]
    if opts.api_token:
        apis = "model-repository,statistics,trace,logging"
        args += [f"--http-restricted-api={apis}:dit-api-token={opts.api_token}",
                 f"--grpc-restricted-protocol={apis}:dit-api-token={opts.api_token}"]  # fmt: skip
    return args


def write_serving_repository(opts: ServeOptions, out: Path, policy: BatchingPolicy) -> Path:
    """The python-backend repository ``serve`` runs, reading ``opts.export_dir`` in place."""
    from .triton_repo import RepoOptions, write_repository

    gpus = None
    if opts.device != "cpu":
        from ..runtime.devices import parse_device

        gpus = (parse_device(opts.device)[1],)
    return write_repository(
        RepoOptions(
            export_dir=opts.export_dir,
            out=out,
            backend="python",
            precision=opts.precision,
            max_batch=opts.max_batch,
            instances=policy.instances,
            kind="cpu" if opts.device == "cpu" else "gpu",
            gpus=gpus,
            max_queue_delay_us=policy.max_queue_delay_us,
            preferred_batch=policy.preferred_batch,
            max_pixels=opts.max_pixels,
            max_image_bytes=opts.max_image_bytes,
            runtime=opts.backend,
            layout=opts.layout,
            threads=policy.threads,
            link_export=True,
        ),
        log=lambda *_: None,
    )


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as r:
            return r.status == 200
    except (OSError, http.client.HTTPException):  # not up yet, or not HTTP on that port
        return False


def _wait_ready(
    opts: ServeOptions, proc: subprocess.Popen, log_file: Path, stopping: list[int]
) -> None:
    """Until Triton reports ready (or a signal arrives); typed errors when it dies or the
    start takes longer than ``START_TIMEOUT_S``."""
    probe = f"http://{'127.0.0.1' if opts.host in ('0.0.0.0', '') else opts.host}"
    probe += f":{opts.http_port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _ready(probe):
        if proc.poll() is not None:
            raise BackendUnavailableError(
                f"tritonserver exited ({proc.returncode}) while loading 'dit': "
                f"{_load_failure(log_file)} (its log: {log_file})"
            )
        if stopping or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    else:
        return
    if not stopping:
        raise BackendUnavailableError(
            f"'dit' was not ready after {START_TIMEOUT_S} s; {_log_tail(log_file)}"
        )


def _preflight(opts: ServeOptions) -> Export:
    """Every check that can fail before anything starts; the export, opened (typed errors)."""
    from ..runtime import Export
    from ..runtime.backends import backend_row

    opts.check()
    check_python_backend()
    for what, port in (
        ("http", opts.http_port),
        ("grpc", opts.grpc_port),
        ("metrics", opts.metrics_port),
    ):
        _check_port_free(opts.host, port, what)
    export = Export.open(opts.export_dir)  # typed errors before anything starts
    reason = backend_row(opts.backend).unavailable_reason(opts.precision, opts.device)
    if reason is not None and opts.device != "cpu":
        raise BackendUnavailableError(
            f"--device {opts.device} needs an NVIDIA GPU: {reason}; serve on the CPU "
            "(--device cpu) or on a GPU machine"
        )
    if reason is not None:
        raise BackendUnavailableError(
            f"--backend {opts.backend} --precision {opts.precision} cannot run here: {reason}"
        )
    return export


def serve(opts: ServeOptions, log: Callable[[str], None] = print) -> int:
    """Run the server until SIGTERM/SIGINT (then drain and return 0) or until Triton dies (1)."""
    from .triton_repo import bundled_tritonserver

    export = _preflight(opts)
    policy = opts.policy()
    warning = public_bind_warning(opts)
    if warning:
        log(f"dit-deploy serve: warning: {warning}")
    stale = remove_stale_shm()
    if stale:
        log(f"dit-deploy serve: removed {stale} shared-memory region(s) of killed servers")
    work = Path(tempfile.mkdtemp(prefix="dit-deploy-serve-"))
    log_file = opts.log_file or Path(tempfile.gettempdir()) / f"dit-deploy-serve-{os.getpid()}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    stopping: list[int] = []

    def _on_signal(signum, _frame):
        stopping.append(signum)

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    proc = None
    try:
        repo = write_serving_repository(opts, work / "repo", policy)
        argv, env = bundled_tritonserver(work / "bin")
        proc = subprocess.Popen(
            [*argv, *tritonserver_args(opts, repo, log_file)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_ready(opts, proc, log_file, stopping)
        if not stopping:
            u = urls(opts)
            layout = export.layout(opts.layout)
            log(
                f"dit-deploy serve: ready: model '{c.MODEL_NAME}' ({opts.backend} "
                f"{opts.precision} {layout}, {opts.device}, max batch {opts.max_batch}; "
                f"{policy.why}) | HTTP {u['http']} | gRPC {u['grpc']} | metrics {u['metrics']}"
                f" | pid {os.getpid()} | log {log_file}"
            )
            sys.stdout.flush()
        while not stopping and proc.poll() is None:
            time.sleep(0.2)
        if not stopping:
            log(f"dit-deploy serve: error: tritonserver exited unexpectedly; {_log_tail(log_file)}")
            return 1
        log(
            f"dit-deploy serve: {signal.Signals(stopping[0]).name}: draining "
            f"(up to {opts.drain_s} s)"
        )
        proc.send_signal(signal.SIGTERM)  # tritonserver stops accepting, then drains
        try:
            proc.wait(opts.drain_s + 15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log("dit-deploy serve: stopped")
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        for s, handler in previous.items():
            signal.signal(s, handler)
        shutil.rmtree(work, ignore_errors=True)
        if proc is not None and proc.poll() is not None:
            remove_stale_shm(own=True)  # what a killed tritonserver left


def _load_failure(log_file: Path) -> str:
    """The reason tritonserver gives for the model that did not load (its first "failed to
    load" line), else the end of its log."""
    import re

    text = log_file.read_text(errors="replace") if log_file.is_file() else ""
    m = re.search(r"failed to load '[^']+'[^:]*: (.*?)\"?$", text, re.M)
    return m.group(1).strip() if m else _log_tail(log_file)


def _log_tail(log_file: Path, lines: int = 3) -> str:
    if not log_file.is_file():
        return f"no tritonserver log at {log_file}"
    tail = log_file.read_text(errors="replace").strip().splitlines()[-lines:]
    return f"tritonserver's log {log_file} ends: " + " | ".join(t.strip() for t in tail)
