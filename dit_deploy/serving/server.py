"""``dit-deploy serve EXPORT_DIR``: the export behind a real Triton Inference Server (PyTriton).

PyTriton starts the ``tritonserver`` binary it bundles (KServe v2 over HTTP and gRPC,
Prometheus metrics, dynamic batching) and binds model ``dit`` (see :mod:`.contract`) to one
:class:`~dit_deploy.runtime.Predictor` per instance. Readiness is strict (``/v2/health/ready``
turns true once ``dit`` is loaded); SIGTERM and Ctrl-C stop accepting work, let in-flight
requests finish (up to ``drain_s``), then exit 0.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError, ConfigError
from ..preprocess import DEFAULT_MAX_PIXELS
from . import contract as c

LOG = logging.getLogger(__name__)


@dataclass
class ServeOptions:
    """Everything ``dit-deploy serve`` needs; checked by :meth:`check` before any work."""

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
    max_queue_delay_us: int = 2000
    instances: int = 1
    threads: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    drain_s: int = 20
    log_file: Path | None = None

    def check(self) -> None:
        ports = {"http": self.http_port, "grpc": self.grpc_port, "metrics": self.metrics_port}
        if len(set(ports.values())) != 3:
            raise ConfigError(f"ports must differ; got {ports}")
        for name, value in (
            ("max_batch", self.max_batch),
            ("instances", self.instances),
            ("drain_s", self.drain_s),
            ("max_pixels", self.max_pixels),
        ):
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1; got {value}")
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"--max-queue-delay-us must be >= 0; got {self.max_queue_delay_us}")
        # PyTriton's own stop() waits 30 s for tritonserver before killing it
        if self.drain_s > 28:
            raise ConfigError(
                f"--drain-s must be <= 28 (PyTriton kills tritonserver after 30 s); "
                f"got {self.drain_s}"
            )


class DITInferFunc:
    """PyTriton inference callable: a batch of requests -> one response dict per request.

    Each request holds ``n >= 1`` rows (IMAGE, TEXT each ``(n, 1)``). Rows are validated one by
    one (:func:`.contract.validate_rows`); the good rows of all requests run through the
    Predictor together; a bad row is answered with its message in ``ERROR``. Anything else
    (a backend failure) raises, and PyTriton fails the batch: that is a server error.
    """

    def __init__(self, predictor, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.predictor = predictor
        self.max_pixels = max_pixels
        self.input_size = predictor.manifest.input_size

    def _check_text(self, text: str) -> None:
        self.predictor.tokenizer.encode(text)

    def __call__(self, requests: Sequence) -> list[dict[str, np.ndarray]]:
        rows: list[c.Row] = []
        spans = []
        for request in requests:
            images = np.asarray(request[c.IMAGE]).reshape(-1)
            texts = np.asarray(request[c.TEXT]).reshape(-1)
            start = len(rows)
            if len(images) != len(texts):
                msg = f"IMAGE has {len(images)} rows but TEXT has {len(texts)}; send one per pair"
                rows += [c.Row(error=msg)] * max(len(images), len(texts))
            else:
                rows += c.validate_rows(
                    images, texts, self.input_size, self.max_pixels, self._check_text
                )
            spans.append((start, len(rows)))
        good = [i for i, row in enumerate(rows) if not row.error]
        results = dict(
            zip(
                good,
                self.predictor.predict_batch([(rows[i].image, rows[i].text) for i in good])
                if good
                else [],
                strict=True,
            )
        )
        responses = []
        for request, (start, stop) in zip(requests, spans, strict=True):
            want = getattr(request, "requested_output_names", None) or c.OUTPUTS
            encoded = [
                c.encode_outputs(results.get(i), want, rows[i].error) for i in range(start, stop)
            ]
            responses.append(c.stack_outputs(encoded, (*c.OUTPUTS, c.ERROR)))
        return responses


def fix_python_backend_env(environ: dict | None = None) -> str | None:
    """Make Triton's python-backend stub load THIS interpreter's ``libpython``.

    The stub links ``libpython3.X.so`` dynamically; with a non-system Python (pyenv, conda)
    the loader may find the distribution's library of another patch release first, and the
    stub fails at start-up (e.g. ``'_thread.RLock' object has no attribute
    '_recursion_count'``). Putting ``sysconfig``'s ``LIBDIR`` first on ``LD_LIBRARY_PATH``
    fixes it. Returns the directory put first, or None when nothing needs changing (no shared
    library, or the system's own Python whose library the loader finds by default).
    """
    environ = os.environ if environ is None else environ
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    if not libdir or not soname or not (Path(libdir) / soname).exists():
        return None
    if libdir.startswith(("/usr/lib", "/lib")):
        return None
    parts = [p for p in environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *[p for p in parts if p != libdir]])
    return libdir


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


def _predictors(opts: ServeOptions) -> list:
    from ..runtime import Predictor

    threads = opts.threads
    if threads is None and opts.device == "cpu":
        threads = max(1, (os.cpu_count() or 1) // opts.instances)
    return [
        Predictor(
            opts.export_dir,
            backend=opts.backend,
            device=opts.device,
            layout=opts.layout,
            threads=threads,
            max_batch=opts.max_batch,
            precision=opts.precision,
        )
        for _ in range(opts.instances)
    ]


def serve(opts: ServeOptions, log: Callable[[str], None] = print) -> int:
    """Run the server until SIGTERM/SIGINT (then drain and return 0) or until Triton dies (1)."""
    opts.check()
    check_python_backend()
    for what, port in (
        ("http", opts.http_port),
        ("grpc", opts.grpc_port),
        ("metrics", opts.metrics_port),
    ):
        _check_port_free(opts.host, port, what)
    predictors = _predictors(opts)  # typed errors (no export, no precision) before Triton starts
    fix_python_backend_env()

    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    logging.getLogger("pytriton").setLevel(logging.WARNING)
    # tritonserver's own log goes to a file: the terminal keeps our one-line status
    log_file = opts.log_file or Path(tempfile.gettempdir()) / f"dit-deploy-serve-{os.getpid()}.log"
    config = TritonConfig(
        http_address=opts.host,
        http_port=opts.http_port,
        grpc_address=opts.host,
        grpc_port=opts.grpc_port,
        metrics_address=opts.host,
        metrics_port=opts.metrics_port,
        exit_timeout_secs=opts.drain_s,
        strict_readiness=True,
        log_file=log_file,
    )
    stopping = threading.Event()

    def _on_signal(signum, _frame):
        if stopping.is_set():
            return
        stopping.set()
        log(f"dit-deploy serve: {signal.Signals(signum).name}: draining (up to {opts.drain_s} s)")
        raise KeyboardInterrupt  # PyTriton's serve() loop stops Triton on it, which drains

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with Triton(config=config) as triton:
            triton.bind(
                model_name=c.MODEL_NAME,
                infer_func=[DITInferFunc(p, opts.max_pixels) for p in predictors],
                inputs=[Tensor(name=n, dtype=bytes, shape=(1,)) for n in c.INPUTS],
                outputs=[
                    Tensor(name=c.MASK_PNG, dtype=bytes, shape=(1,)),
                    Tensor(name=c.MASK_RLE, dtype=bytes, shape=(1,)),
                    Tensor(name=c.SCORE, dtype=np.float32, shape=(1,)),
                    Tensor(name=c.ERROR, dtype=bytes, shape=(1,)),
                ],
                config=ModelConfig(
                    max_batch_size=opts.max_batch,
                    batcher=DynamicBatcher(max_queue_delay_microseconds=opts.max_queue_delay_us),
                ),
                strict=True,
            )
            triton.run()
            p = predictors[0]
            u = urls(opts)
            log(
                f"dit-deploy serve: ready: model '{c.MODEL_NAME}' ({opts.backend} {p.precision} "
                f"{p.layout}, {opts.device}, max batch {opts.max_batch}, "
                f"{opts.instances} instance(s)) | HTTP {u['http']} | gRPC {u['grpc']} | "
                f"metrics {u['metrics']} | pid {os.getpid()} | log {log_file}"
            )
            sys.stdout.flush()
            triton.serve(monitoring_period_s=1.0)
    except KeyboardInterrupt:
        stopping.set()
    except Exception as exc:  # PyTriton's start-up errors (stub, ports, time-outs) in one line
        if stopping.is_set():
            raise
        raise BackendUnavailableError(
            f"Triton did not start ({type(exc).__name__}: {exc}); {_log_tail(log_file)}"
        ) from exc
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stopping.is_set():
        log("dit-deploy serve: stopped")
        return 0
    log(f"dit-deploy serve: error: tritonserver exited unexpectedly; {_log_tail(log_file)}")
    return 1


def _log_tail(log_file: Path, lines: int = 3) -> str:
    if not log_file.is_file():
        return f"no tritonserver log at {log_file}"
    tail = log_file.read_text(errors="replace").strip().splitlines()[-lines:]
    return f"tritonserver's log {log_file} ends: " + " | ".join(t.strip() for t in tail)
