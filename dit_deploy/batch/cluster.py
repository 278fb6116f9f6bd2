"""Connecting to Ray: an embedded local instance on 127.0.0.1 (default), or a cluster.

Ray is imported here only, and only when a job runs, so ``dit_deploy`` without the ``batch``
extra imports fine and ``dit-deploy batch`` says which extra to install.

The embedded instance:

- binds every Ray process to the loopback interface (Ray otherwise picks the routable
  address of the host; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is Ray's switch for
  "single-machine, loopback only", read when Ray is first imported in the process: a
  warning says so when Ray was imported before and bound elsewhere);
- keeps Ray's token authentication on, with a random token held in this process's
  environment for the life of the instance, so nothing is written to ``~/.ray/auth_token``
  (an explicit ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH`` is respected);
- has no dashboard, and is stopped when the job ends.

A cluster (``--ray-address``): its address is checked for a listener first (a one-line error
within seconds instead of Ray's minutes of "Failed to connect to GCS"); a loopback address
(``127.0.0.1:PORT``, a cluster of processes on this machine) is kept as given, where Ray
would otherwise replace it with the machine's interface address, on which a loopback-bound
cluster does not answer.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType

from ..errors import BackendUnavailableError

LOOPBACK = "127.0.0.1"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
REACH_TIMEOUT_S = 5.0
_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
_LOCAL_ONLY_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_PROCESS_TOKEN = secrets.token_hex(32)  # one per process: Ray's token loader caches it


def require_ray() -> None:
    """Check that Ray Data is installed without importing Ray (its import reads settings
    that :func:`connect` sets first)."""
    missing = [m for m in ("ray", "pyarrow", "pandas") if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendUnavailableError(
            f"dit-deploy batch runs on Ray Data, which is not installed here (missing: "
            f"{', '.join(missing)}); install it with: pip install 'dit-deploy[batch]'"
        )


def import_ray() -> ModuleType:
    """``ray`` with Ray Data, or a typed error naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (needs pandas + pyarrow: the ray[data] extra)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"dit-deploy batch runs on Ray Data, which is not installed here ({exc}); "
            "install it with: pip install 'dit-deploy[batch]'"
        ) from None
    quiet_known_ray_lines()
    return ray


# Ray's terminal lines that are known and harmless for this command, each with the reason;
# everything else Ray logs (its errors above all) still reaches the terminal
KNOWN_HARMLESS = {
    "Token authentication is enabled for this Ray cluster": "kept on on purpose (module doc)",
    "Progress bars disabled": "the command prints its own progress lines",
    "Starting execution of Dataset": "the command logs its own start line",
    "Execution plan of Dataset": "the plan is fixed (prepare -> PredictorWorker -> finish)",
    "execution finished in": "the command logs its own summary",
}


class _KnownHarmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(known in message for known in KNOWN_HARMLESS)


def terminal_handlers() -> list[logging.Handler]:
    """The handlers of Ray's loggers that write to a terminal (not its session log files)."""
    return [
        h
        for name in ("ray", "ray.data")
        for h in logging.getLogger(name).handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]


def quiet_known_ray_lines() -> None:
    """Drop :data:`KNOWN_HARMLESS` lines from :func:`terminal_handlers` (Ray's session log
    files keep them)."""
    for handler in terminal_handlers():
        if not any(isinstance(f, _KnownHarmless) for f in handler.filters):
            handler.addFilter(_KnownHarmless())


# Lines Ray's C++ core worker writes to this process's stderr (not through Python logging)
KNOWN_HARMLESS_NATIVE = {
    # Ray Data keeps every actor's constructor in the object store and restarts actors
    # (max_restarts=-1); the driver holds those references for the whole job
    "has constructor arguments in the object store and max_restarts > 0": "Ray Data's pool",
}


@contextlib.contextmanager
def quiet_known_native_lines() -> Iterator[None]:
    """While the pipeline runs, pass this process's stderr (file descriptor 2) through a
    thread that drops :data:`KNOWN_HARMLESS_NATIVE` lines and forwards every other line."""
    import sys
    import threading

    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                text = line.decode("utf-8", "replace")
                if not any(known in text for known in KNOWN_HARMLESS_NATIVE):
                    os.write(saved, line)

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the thread drains and ends
        thread.join(5)
        os.close(saved)


@dataclass(frozen=True)
class RayInfo:
    """How the job reached Ray."""

    mode: str  # "embedded" | "cluster" | "existing" (the caller's own ray.init)
    address: str
    cpus: float
    gpus: float

    def line(self) -> str:
        where = {
            "embedded": "embedded local Ray",
            "cluster": "Ray cluster",
            "existing": "the Ray this process is already connected to",
        }[self.mode]
        return f"{where} at {self.address} ({self.cpus:g} CPUs, {self.gpus:g} GPUs)"


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in (*values, *_AUTH_VARS)}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _embedded_environment() -> dict[str, str]:
    values = {_LOCAL_ONLY_VAR: "0"}
    if not any(os.environ.get(k) for k in _AUTH_VARS):
        # ray.init turns token mode on for a new local instance and takes this token
        # instead of generating one into ~/.ray/auth_token
        values["RAY_AUTH_TOKEN"] = _PROCESS_TOKEN
    return values


@contextlib.contextmanager
def connect(
    address: str | None, num_cpus: int, log: Callable[[str], None] = print
) -> Iterator[RayInfo]:
    """Connect to Ray for the duration of a job.

    Args:
        address: ``None`` starts an embedded instance (stopped on exit); else
            ``ray.init(address=...)`` joins that cluster (``auto``, ``ray://host:10001``, ...).
            A process already connected (``ray.is_initialized()``) keeps its connection.
        num_cpus: CPUs of the embedded instance.
    """
    if address is None:
        with _environment(_embedded_environment()):
            ray = import_ray()
            if ray.is_initialized():
                yield _info(ray, "existing")
                return
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=False,
                logging_level="WARNING",
                _node_ip_address=LOOPBACK,
            )
            try:
                info = _info(ray, "embedded")
                if info.address != LOOPBACK:
                    log(f"warning: Ray bound to {info.address}, not {LOOPBACK}")
                yield info
            finally:
                ray.shutdown()
        return
    host_port = gcs_host_port(address)
    loopback = host_port is not None and host_port[0] in LOOPBACK_NAMES
    if host_port is not None:
        check_reachable(address, *host_port)
    with _environment({_LOCAL_ONLY_VAR: "0"} if loopback else {}):
        ray = import_ray()
        if ray.is_initialized():
            yield _info(ray, "existing")
            return
        ray.init(
            address=address,
            logging_level="WARNING",
            **({"_node_ip_address": LOOPBACK} if loopback else {}),
        )
        try:
            yield _info(ray, "cluster", address)
        finally:
            ray.shutdown()  # disconnects; the cluster keeps running


def gcs_host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``HOST:PORT`` or ``ray://HOST:PORT``; None for ``auto`` (Ray looks
    the address up itself).

    Raises:
        BackendUnavailableError: not one of the forms Ray takes.
    """
    if address == "auto":
        return None
    rest = address.removeprefix("ray://")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or "/" in rest:
        raise BackendUnavailableError(
            f"--ray-address {address!r} is not a Ray address: use HOST:PORT (the head's GCS "
            "port, 6379 by default), ray://HOST:10001 (Ray Client) or auto"
        )
    return host.strip("[]"), int(port)


def check_reachable(address: str, host: str, port: int) -> None:
    """A one-line error when nothing accepts connections at ``host:port``."""
    try:
        socket.create_connection((host, port), timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        raise BackendUnavailableError(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one "
            f"(ray start --head --port {port}) or pass the head's address"
        ) from None


def _info(ray: ModuleType, mode: str, address: str | None = None) -> RayInfo:
    resources = ray.cluster_resources()
    return RayInfo(
        mode,
        address or ray.util.get_node_ip_address(),
        float(resources.get("CPU", 0)),
        float(resources.get("GPU", 0)),
    )
