"""``DITClient``: masks from a Triton server, as the in-process Predictor returns them.

    client = DITClient("http://127.0.0.1:8000")         # or "grpc://127.0.0.1:8001"
    r = client.predict("horse.jpg", "gray horse with blue halter")     # MaskResult
    rs = client.predict_batch([("a.jpg", "left man"), ("b.png", "the cup")])

Works against ``dit-deploy serve`` and against a ``dit-deploy triton-repo`` repository. Built on
``tritonclient`` (HTTP and gRPC). ``predict_batch`` sends one request per pair, ``concurrency``
at a time, so the server's dynamic batcher merges them and a bad pair fails alone. Errors are
typed (:mod:`.errors`): :class:`RequestError` for a refused pair (Triton's message),
:class:`ServerUnavailableError` / :class:`ServerTimeoutError` naming the URL, and
:class:`ServerError` with the HTTP status or gRPC code for anything else.
"""

from __future__ import annotations

import io
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from ..errors import ConfigError, ImageError, TextError
from ..mask_codec import decode_png, decode_rle
from ..postprocess import MaskResult
from ..preprocess import load_image
from . import contract as c
from .errors import RequestError, ServerError, ServerTimeoutError, ServerUnavailableError

ImageInput = str | os.PathLike | bytes | Image.Image | np.ndarray

_REFUSED = ("connection refused", "failed to connect", "connect failed", "unavailable")
_TIMEOUT = ("deadline exceeded", "timed out", "timeout")


def image_bytes(image: ImageInput) -> bytes:
    """The bytes sent as IMAGE: a file's own bytes (decoded server-side exactly as a local
    ``load_image(path)``), or a lossless PNG of a PIL image / array as ``load_image`` reads
    it (EXIF orientation applied, 16-bit and float converted, alpha dropped: the server then
    sees what an in-process Predictor would)."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if path.is_dir():
            raise ImageError(f"{path} is a directory; give an image file")
        if not path.is_file():
            raise ImageError(f"image file not found: {path}")
        return path.read_bytes()
    if isinstance(image, (np.ndarray, Image.Image)):
        buf = io.BytesIO()
        Image.fromarray(load_image(image)).save(buf, format="PNG")
        return buf.getvalue()
    raise ImageError(
        f"cannot send a {type(image).__name__}; pass a path, bytes, a PIL image or an array"
    )


def parse_url(url: str) -> tuple[str, str]:
    """``("http" | "grpc", "host:port")``; no scheme means HTTP."""
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        port = parts.port  # raises ValueError when out of range
    except (TypeError, ValueError):
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "grpc") or not parts.hostname or not port:
        raise ConfigError(
            f"server URL {url!r} must look like http://HOST:PORT or grpc://HOST:PORT "
            "(e.g. http://127.0.0.1:8000, grpc://127.0.0.1:8001)"
        )
    return parts.scheme, f"{parts.hostname}:{port}"


def classify(exc: BaseException, url: str) -> ServerError:
    """Any tritonclient / network exception -> the matching typed :class:`ServerError`."""
    status = exc.status() if hasattr(exc, "status") and callable(exc.status) else None
    message = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    message = str(message or type(exc).__name__)
    if status in ("400", "StatusCode.INVALID_ARGUMENT"):  # first: its text is the user's
        return RequestError(
            f"{url} refused the request ({status}): {message}",
            url=url,
            status=status,
            server_message=message,
        )
    low = f"{status} {message}".lower()
    gevent_timeout = type(exc).__name__ == "Timeout"
    if (
        isinstance(exc, (TimeoutError, socket.timeout))
        or gevent_timeout
        or any(t in low for t in _TIMEOUT)
    ):
        return ServerTimeoutError(
            f"no answer from {url} in time ({message}); raise the client time-out or check "
            "the server's load",
            url=url,
            status=status,
            server_message=message,
        )
    if _network_error(exc) or any(t in low for t in _REFUSED):
        return ServerUnavailableError(
            f"cannot reach a Triton server at {url} ({message}); is it running? start one with "
            "'dit-deploy serve EXPORT_DIR'",
            url=url,
            status=status,
            server_message=message,
        )
    return ServerError(
        f"{url} answered {status or 'an error'}: {message}",
        url=url,
        status=status,
        server_message=message,
    )


def _network_error(exc: BaseException) -> bool:
    """A socket error, or a client library's error raised from one (geventhttpclient's
    ``HTTPConnectionClosed`` is raised from the ``ConnectionResetError`` of a server that
    closed the connection without answering: it is gone or stopping)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, (ConnectionError, OSError)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class DITClient:
    """A client of model ``dit`` on one Triton server.

    Args:
        url: ``http://host:port`` (KServe v2 HTTP) or ``grpc://host:port``.
        timeout_s: connect + answer time-out per request.
        concurrency: requests in flight at once in :meth:`predict_batch`.
        output: the mask encoding to fetch, ``"rle"`` (compact) or ``"png"``.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 60.0,
        concurrency: int = 8,
        output: str = "rle",
        model: str = c.MODEL_NAME,
    ) -> None:
        self.protocol, self.address = parse_url(url)
        self.url = f"{self.protocol}://{self.address}"
        if output not in ("rle", "png"):
            raise ConfigError(f"output must be 'rle' or 'png'; got {output!r}")
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ConfigError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        if not isinstance(timeout_s, (int, float)) or not 0 < timeout_s < float("inf"):
            raise ConfigError(f"timeout_s must be a number of seconds > 0, got {timeout_s!r}")
        self.timeout_s, self.concurrency, self.model = timeout_s, concurrency, model
        self.mask_output = c.MASK_RLE if output == "rle" else c.MASK_PNG
        self._local = threading.local()
        self._outputs: tuple[str, ...] | None = None

    # -- transport ------------------------------------------------------------------
    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "http":
                import tritonclient.http as tc

                client = tc.InferenceServerClient(
                    self.address,
                    connection_timeout=self.timeout_s,
                    network_timeout=self.timeout_s,
                )
            else:
                import tritonclient.grpc as tc

                client = tc.InferenceServerClient(self.address)
            self._local.client = client
        return client

    def _module(self):
        if self.protocol == "http":
            import tritonclient.http as tc
        else:
            import tritonclient.grpc as tc
        return tc

    def _timeout(self) -> dict:
        """gRPC calls take their deadline per call; HTTP's is set on the client."""
        return {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # tritonclient, gevent, grpc and socket errors alike
            self._local.client = None  # a broken connection is not reused
            raise classify(exc, self.url) from exc

    def is_ready(self) -> bool:
        """True when the server is up and model ``dit`` is loaded."""
        try:
            return bool(self._call(self._client().is_model_ready, self.model, **self._timeout()))
        except ServerError:
            return False

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until :meth:`is_ready`; :class:`ServerUnavailableError` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                kwargs = self._timeout()
                if self._call(self._client().is_model_ready, self.model, **kwargs):
                    return
                last = f"the server answers, but model '{self.model}' is not loaded"
            except ServerError as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise ServerUnavailableError(
                    f"model '{self.model}' at {self.url} not ready after {timeout_s:.0f} s; "
                    f"last: {last}",
                    url=self.url,
                )
            time.sleep(0.2)

    def outputs(self) -> tuple[str, ...]:
        """The model's output names (read once from its metadata)."""
        if self._outputs is None:
            meta = self._call(self._client().get_model_metadata, self.model, **self._timeout())
            if not isinstance(meta, dict):  # gRPC: a protobuf
                meta = {"outputs": [{"name": o.name} for o in meta.outputs]}
            self._outputs = tuple(o["name"] for o in meta["outputs"])
        return self._outputs

    # -- inference ------------------------------------------------------------------
    def infer_raw(self, image: ImageInput, text: str, outputs: Sequence[str]) -> dict:
        """One request (one row): ``{output name: value}`` for the outputs asked for.

        Raises :class:`RequestError` when the server refused the row (Triton's 400 /
        INVALID_ARGUMENT), and the other :class:`ServerError` types as :func:`classify`.
        """
        if not isinstance(text, str):  # str(b"cat") would send "b'cat'"
            raise TextError(f"a referring expression must be a str, got {type(text).__name__}")
        tc = self._module()
        data = image_bytes(image)
        inputs = [tc.InferInput(c.IMAGE, [1, 1], "BYTES"), tc.InferInput(c.TEXT, [1, 1], "BYTES")]
        inputs[0].set_data_from_numpy(np.array([[data]], dtype=object))
        try:
            encoded = text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from os.fsdecode
            reason = exc.reason
            raise TextError(f"the expression is not valid Unicode ({reason}); send text") from None
        inputs[1].set_data_from_numpy(np.array([[encoded]], dtype=object))
        names = list(outputs)
        if self.protocol == "http":
            wanted = [tc.InferRequestedOutput(n, binary_data=True) for n in names]
        else:
            wanted = [tc.InferRequestedOutput(n) for n in names]
        result = self._call(
            self._client().infer, self.model, inputs, outputs=wanted, **self._timeout()
        )
        values = {}
        for n in names:
            array = result.as_numpy(n)
            if array is None:
                raise ServerError(f"{self.url} sent no {n} output", url=self.url)
            values[n] = array.reshape(-1)[0]
        return values

    def predict(self, image: ImageInput, text: str) -> MaskResult:
        """Mask (bool, original H x W) and score for one image and one expression."""
        values = self.infer_raw(image, text, (self.mask_output, c.SCORE))
        raw = bytes(values[self.mask_output])
        mask = decode_rle(raw) if self.mask_output == c.MASK_RLE else decode_png(raw)
        return MaskResult(mask, float(values[c.SCORE]))

    def predict_batch(
        self, pairs: Sequence[tuple[ImageInput, str]], *, return_errors: bool = False
    ) -> list[MaskResult | ServerError]:
        """Masks for (image, expression) pairs, ``concurrency`` requests in flight.

        Raises the first pair's error; with ``return_errors=True`` a failed pair's
        :class:`ServerError` takes its place in the list instead.
        """

        def one(pair):
            try:
                return self.predict(*pair)
            except ServerError as exc:
                if return_errors:
                    return exc
                raise

        from ..runtime.predictor import check_pairs  # the in-process Predictor's own rule

        pairs = check_pairs(pairs)
        if len(pairs) <= 1:
            return [one(p) for p in pairs]
        with ThreadPoolExecutor(min(self.concurrency, len(pairs))) as pool:
            return list(pool.map(one, pairs))


_METRIC = re.compile(r"^(nv_inference_[a-z_]+)\{([^}]*)\}\s+([0-9.eE+-]+)$")


def read_metrics(metrics_url: str, model: str = c.MODEL_NAME, timeout_s: float = 5.0) -> dict:
    """Triton's per-model counters from its Prometheus endpoint (summed over versions).

    Keys drop the ``nv_inference_`` prefix: ``request_success``, ``request_failure``,
    ``count`` (inferences = rows), ``exec_count`` (model executions = batches),
    ``queue_duration_us``, ``compute_infer_duration_us``, ``request_duration_us``, ...

    ``dit`` is an ensemble whose requests are what clients see; the rows, batches and
    queue/compute times are those of the model that batches inside it (``dit_pipeline``
    for ``serve`` and ``--backend python``, ``dit_model`` over a native backend).
    """
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:
            text = response.read().decode("utf-8")
    except (urllib.error.URLError, OSError) as exc:
        raise ServerUnavailableError(
            f"cannot read Triton's metrics at {metrics_url} ({exc}); pass the server's "
            "metrics URL (http://HOST:METRICS_PORT/metrics)",
            url=metrics_url,
        ) from None
    per_model: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = _METRIC.match(line.strip())
        name = _MODEL_LABEL.search(m.group(2)) if m else None
        if name:
            counters = per_model.setdefault(name.group(1), {})
            key = m.group(1).removeprefix("nv_inference_")
            counters[key] = counters.get(key, 0.0) + float(m.group(3))
    out = dict(per_model.get(model, {}))
    if model == c.MODEL_NAME:
        inner = next((per_model[n] for n in _BATCHING_MODELS if n in per_model), None)
        if inner is not None:
            out.update({k: v for k, v in inner.items() if k in _BATCH_KEYS})
    return out


_MODEL_LABEL = re.compile(r'model="([^"]+)"')
_BATCHING_MODELS = ("dit_pipeline", "dit_model")
_BATCH_KEYS = ("count", "exec_count", "queue_duration_us", "compute_input_duration_us",
               "compute_infer_duration_us", "compute_output_duration_us")  # fmt: skip
