"""OpenVINO backend (CPU): reads our ONNX graphs directly, with the execution precision pinned.

OpenVINO's CPU plugin runs FP32 graphs in BF16 by default wherever the CPU has BF16 units,
so an unpinned "fp32" would silently be BF16. Here the precision is always explicit:

- ``f32`` (the fp32, fp16 and int8 graphs): ``INFERENCE_PRECISION_HINT=f32``; an int8 Q/DQ
  graph runs its quantized ops in INT8 and everything else in FP32.
- ``bf16`` (the fp32 graph, executed in BF16: the manifest records it as a precision whose
  graph is the fp32 file with ``execution: "openvino-bf16"``): only where the CPU reports
  BF16 in ``OPTIMIZATION_CAPABILITIES`` (AVX512-BF16 or AMX); elsewhere a
  :class:`~dit_deploy.errors.PrecisionUnavailableError`.

Compiled models are cached (``CACHE_DIR``) so that a second start skips compilation.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ...errors import ArtifactError, BackendUnavailableError, ConfigError, PrecisionUnavailableError
from ..manifest import TensorSpec
from .base import Backend
from .table import GraphRequest

EXECUTIONS = ("f32", "bf16")
HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
CACHE_ENV = "DIT_DEPLOY_OPENVINO_CACHE"


def default_cache_dir() -> Path:
    """``$DIT_DEPLOY_OPENVINO_CACHE``, else ``$XDG_CACHE_HOME`` (or ``~/.cache``)/dit_deploy/
    openvino. One shared directory is safe: OpenVINO keys each blob by the model's content,
    the device and the compile options."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dit_deploy" / "openvino"


def _openvino():
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError(
            "openvino is not installed: pip install 'dit-deploy[openvino]' (or pip install "
            "openvino), or use backend='onnxruntime'"
        ) from exc
    return openvino


def cpu_capabilities(core=None) -> list[str]:
    """What OpenVINO's CPU plugin says this CPU can do (``FP32``, ``BF16``, ``INT8``, ...)."""
    core = core if core is not None else _openvino().Core()
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def bf16_unavailable_reason(core=None) -> str | None:
    """None where OpenVINO can run BF16 on this CPU, else why not."""
    caps = cpu_capabilities(core)
    if "BF16" in caps:
        return None
    return (
        f"this CPU has no BF16 units (OpenVINO CPU capabilities: {', '.join(caps)}); BF16 needs "
        "AVX512-BF16 or AMX (Intel Cooper Lake/Sapphire Rapids or later, AMD Zen 4 or later). "
        "Use precision fp32 or int8 here"
    )


def _spec(port) -> TensorSpec:
    shape: list[int | str] = [
        d.get_length() if d.is_static else "batch" for d in port.get_partial_shape()
    ]
    dtype = np.dtype(port.get_element_type().to_dtype()).name
    return TensorSpec(_graph_name(port.get_names()), dtype, shape)


def _graph_name(names: set[str]) -> str:
    """The ONNX graph's own name for a port. OpenVINO may merge an output with the internal
    tensor feeding it (``{"image_embedding", "/neck/neck.3/Mul_output_0"}``) and
    ``get_any_name`` then returns either; exporter-internal names start with "/"."""
    public = sorted(n for n in names if not n.startswith("/"))
    return public[0] if public else sorted(names)[0]


class OpenVINOBackend(Backend):
    """One ONNX graph compiled by OpenVINO for the CPU.

    ``execution``: ``f32`` or ``bf16`` (see the module docstring). ``threads``:
    ``INFERENCE_NUM_THREADS``; ``streams``: ``NUM_STREAMS`` (parallel requests; the default
    ``PERFORMANCE_HINT=LATENCY`` uses one); ``cache_dir``: where compiled blobs go
    (default :func:`default_cache_dir`; ``False`` disables caching). Thread-safe: each call
    takes an infer request from a pool (requests themselves are not thread-safe).
    """

    def __init__(
        self,
        graph: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        execution: str = "f32",
        streams: int | None = None,
        hint: str = "LATENCY",
        cache_dir: str | Path | bool | None = None,
    ) -> None:
        ov = _openvino()
        if device != "cpu":
            raise BackendUnavailableError(
                f"the openvino backend runs on the CPU here (--device cpu), not {device!r}; "
                "use --backend onnxruntime or tensorrt for NVIDIA GPUs"
            )
        if execution not in EXECUTIONS:
            raise ConfigError(
                f"openvino execution precision {execution!r}: choose one of {EXECUTIONS}"
            )
        if hint not in HINTS:
            raise ConfigError(f"openvino performance hint {hint!r}: choose one of {HINTS}")
        for name, value in (("threads", threads), ("streams", streams)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"openvino {name} must be a positive integer, got {value!r}")
        self.path = Path(graph)
        if not self.path.is_file():
            raise ArtifactError(f"graph not found: {self.path}; re-export the model")
        core = ov.Core()
        if execution == "bf16":
            reason = bf16_unavailable_reason(core)
            if reason is not None:
                raise PrecisionUnavailableError(reason)
        config: dict[str, object] = {
            "INFERENCE_PRECISION_HINT": execution,
            "PERFORMANCE_HINT": hint,
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
            if threads < (os.cpu_count() or 1):
                # A share of the cores: OpenVINO pins each process's threads from the first
                # core on, so processes side by side (batch workers, Triton instances) shared
                # cores. ViT-B, 2 processes x 1 thread: 0.46 + 0.45 pairs/s pinned, 0.94 + 0.92
                # unpinned (2-core AVX512-VNNI VM).
                config["ENABLE_CPU_PINNING"] = False
        if streams:
            config["NUM_STREAMS"] = streams
        if cache_dir is not False:
            cache = Path(cache_dir) if cache_dir not in (None, True) else default_cache_dir()
            cache.mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache)
            self.cache_dir: Path | None = cache
        else:
            self.cache_dir = None
        try:
            # a path (not a read Model) lets a cached blob be imported without parsing the ONNX
            self.compiled = core.compile_model(str(self.path), "CPU", config)
        except RuntimeError as exc:
            raise ArtifactError(
                f"OpenVINO cannot compile {self.path}: {exc}. The file is corrupt or uses an "
                "op this OpenVINO does not support; re-export it or use backend='onnxruntime'"
            ) from exc
        self.execution = execution
        self.config = {k: str(v) for k, v in config.items()}
        self.inputs = [_spec(p) for p in self.compiled.inputs]
        self.outputs = [_spec(p) for p in self.compiled.outputs]
        self._requests: queue.SimpleQueue = queue.SimpleQueue()

    def compiled_property(self, name: str) -> str:
        """A property of the compiled model as OpenVINO applied it (``f32``/``bf16`` for the
        precision hint)."""
        value = self.compiled.get_property(name)
        return value.get_type_name() if hasattr(value, "get_type_name") else str(value)

    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            result = request.infer(dict(feeds))
            return {spec.name: np.asarray(result[spec.name]) for spec in self.outputs}
        finally:
            self._requests.put(request)


def open_graph(request: GraphRequest) -> OpenVINOBackend:
    """The backend table's opener: an ONNX graph compiled for the CPU (``request.execution``
    ``bf16`` runs it in BF16)."""
    return OpenVINOBackend(
        request.path,
        device=request.device,
        threads=request.threads,
        execution=request.execution or "f32",
        **request.options,
    )


def unavailable_reason(precision: str, device: str) -> str | None:
    """The backend table's probe: BF16 needs BF16 units, as OpenVINO's CPU plugin reports."""
    del device  # the table allows only the CPU
    return bf16_unavailable_reason() if precision == "bf16" else None
