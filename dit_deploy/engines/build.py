"""Typed ONNX graph -> TensorRT engine + ``*.engine.json`` sidecar. One code path, TRT 10 and 11.

Precision comes from the graph (FP16 types, Q/DQ nodes), never from builder flags: the
network is created strongly typed (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, which
TensorRT 10 needs and TensorRT 11 accepts and ignores: it is always strongly typed and has
no FP16/INT8 flags, precision constraints or INT8 calibrators any more). No
``EXPLICIT_BATCH`` flag (the default in 10, removed in 11). TF32 is cleared, so the FP32
parts of a graph run in FP32 (TensorRT enables TF32 by default); the sidecar records it.

Everything that can fail cheaply is checked before the long build: the GPU, cuda-python,
TensorRT, the options this TensorRT supports. The engine is loaded back (with host code
allowed for version-compatible plans) and only then written, atomically
(:mod:`dit_deploy.atomic`). The timing cache is one file per GPU architecture and TensorRT
version (``timing_cache_file``): attached only when TensorRT accepts it, and saved merged with
the file's previous entries once the engine is committed (an unwritable cache costs a note,
never the engine).

Why not Polygraphy's loaders for this: its ``CreateConfig`` ignores the result of
``set_timing_cache`` as we used to, its logging walks the whole config API (a far larger
surface to keep checked against three TensorRT versions), and the calls below are few and
each one is checked against the real bindings' signatures by ``tests/test_tensorrt_api.py``.
Polygraphy is used where it is the better tool: comparing engines with ONNX Runtime
(:mod:`dit_deploy.engines.compare`) and ``polygraphy debug precision`` (README).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_bytes_atomic
from ..errors import ArtifactError, BackendUnavailableError, ConfigError
from ..hashing import sha256_file
from ..runtime.devices import GpuInfo, gpu_info, gpu_unavailable_reason
from ..runtime.engine_sidecar import (
    HARDWARE_COMPAT,
    PRECISIONS,
    EngineSidecar,
    engine_file,
    write_sidecar,
)
from ..runtime.manifest import LAYOUT_ROLES, GraphSpec, Manifest, TensorSpec

LAYOUTS = (*LAYOUT_ROLES, "all")
# the TensorRT release that added each non-default hardware-compatibility level
HARDWARE_COMPAT_SINCE = {"ampere_plus": (8, 6), "same_compute_capability": (10, 9)}


@dataclass(frozen=True)
class EngineOptions:
    """What ``dit-deploy engines`` builds and how (validated on creation: ConfigError)."""

    export_dir: Path
    precisions: tuple[str, ...] = ("fp32",)
    layout: str = "all"
    max_batch: int = 8
    opt_batch: int | None = None  # default: max(1, max_batch // 2)
    min_batch: int = 1
    workspace_gb: float = 4.0
    builder_optimization_level: int = 3
    timing_cache: Path | None = None
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    command: str = field(default="", compare=False)  # how to rerun this build (messages)

    def __post_init__(self) -> None:
        opt = self.resolved_opt_batch()
        if not 1 <= self.min_batch <= opt <= self.max_batch:
            raise ConfigError(
                f"need 1 <= min batch ({self.min_batch}) <= opt batch ({opt}) <= max batch "
                f"({self.max_batch})"
            )
        if not 0 <= self.builder_optimization_level <= 5:
            raise ConfigError("--builder-opt-level must be 0..5")
        if self.hardware_compatibility not in HARDWARE_COMPAT:
            raise ConfigError(f"--hardware-compat: choose one of {HARDWARE_COMPAT}")
        if self.workspace_gb <= 0:
            raise ConfigError("--workspace-gb must be > 0")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"--layout: choose one of {LAYOUTS}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise ConfigError(f"--precision: choose from {PRECISIONS}, got {list(bad)}")

    def resolved_opt_batch(self) -> int:
        return self.opt_batch or max(1, self.max_batch // 2)

    def rerun_command(self) -> str:
        if self.command:
            return self.command
        return (
            f"dit-deploy engines {self.export_dir} --precision {' '.join(self.precisions)} "
            f"--max-batch {self.max_batch}"
        )


def _roles(manifest: Manifest, layout: str) -> list[str]:
    wanted = LAYOUT_ROLES.get(layout)
    return [r for r in manifest.graphs if wanted is None or r in wanted]


def plan(options: EngineOptions) -> tuple[Manifest, list[tuple[str, str, GraphSpec]]]:
    """The (precision, role, graph) list to build; typed errors for what the export lacks."""
    from ..runtime.export import Export

    manifest = Export.open(options.export_dir).manifest
    jobs = [
        (precision, role, manifest.graph(role, precision))
        for precision in options.precisions
        for role in _roles(manifest, options.layout)
    ]
    if not jobs:
        raise ArtifactError(f"{options.export_dir} has no {options.layout} graphs to build")
    return manifest, jobs


def check_options_supported(trt: Any, options: EngineOptions) -> None:
    """Refuse, before building, an option this TensorRT does not have (ConfigError)."""
    level = options.hardware_compatibility
    if level != "none" and not hasattr(trt.HardwareCompatibilityLevel, level.upper()):
        major, minor = HARDWARE_COMPAT_SINCE[level]
        raise ConfigError(
            f"--hardware-compat {level} needs TensorRT >= {major}.{minor}, this is TensorRT "
            f"{trt.__version__}; upgrade TensorRT (pip install 'dit-deploy[gpu]') or choose "
            "--hardware-compat ampere_plus/none"
        )


def build_engines(options: EngineOptions, log: Callable[[str], None] = print) -> list[Path]:
    """Build every engine ``options`` asks for; return their paths (sidecars beside them).

    Raises:
        ConfigError: an option this machine's TensorRT lacks.
        ArtifactError: the export lacks a graph, or TensorRT cannot parse/build/load one.
        BackendUnavailableError: no GPU, TensorRT or cuda-python here (all missing pieces
            named, with the command to run on a GPU machine).
    """
    manifest, jobs = plan(options)
    reason = gpu_unavailable_reason()
    if reason is not None:
        files = ", ".join(spec.file for _, _, spec in jobs)
        raise BackendUnavailableError(
            f"cannot build TensorRT engines here: {reason}. The graphs of "
            f"{options.export_dir} are ready ({files}); on a machine with an NVIDIA GPU, "
            f"pip install 'dit-deploy[gpu]' and run: {options.rerun_command()}"
        )
    import tensorrt as trt

    check_options_supported(trt, options)
    gpu = gpu_info()  # before any build: a missing piece must not cost a build
    return [
        build_engine(trt, gpu, options, manifest, role, spec, precision, log)
        for precision, role, spec in jobs
    ]


def _network_flags(trt: Any) -> int:
    """Strongly typed: required for typed graphs in 10.x (since 10.0), always on in 11.x."""
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def timing_cache_file(path: Path, compute_capability: str, tensorrt_version: str) -> Path:
    """The file of ``--timing-cache PATH`` for one GPU architecture and TensorRT version:
    ``timing.cache`` -> ``timing.sm90.trt10.13.3.cache``. Timings are only valid for both,
    and merging another GPU's entries would stamp them with this GPU's header."""
    sm = "sm" + compute_capability.replace(".", "")
    version = ".".join(tensorrt_version.split(".")[:3])
    return path.with_name(f"{path.stem}.{sm}.trt{version}{path.suffix}")


def _attach_timing_cache(trt: Any, config: Any, path: Path | None, log) -> bytes:
    """Attach this GPU and TensorRT's cache file (``timing_cache_file``) when TensorRT takes
    it, else an empty cache. Returns the file's bytes, merged back after the build."""
    blob = path.read_bytes() if path is not None and path.is_file() else b""
    if blob:
        cache = config.create_timing_cache(blob)
        if cache is not None and config.set_timing_cache(cache, False):
            return blob
        log(f"timing cache {path} is not usable by this TensorRT; starting an empty one")
        blob = b""
    cache = config.create_timing_cache(b"")
    if not config.set_timing_cache(cache, False):
        log("TensorRT refused an empty timing cache; building without one")
    return blob


def _save_timing_cache(trt: Any, config: Any, path: Path, previous: bytes, log) -> None:
    """Merge this build's timings with the file's previous ones (same GPU and TensorRT) and
    write the file atomically; skip (with a note) when TensorRT has no cache to give. A
    cache that cannot be written is a note too: the engine is already committed."""
    cache = config.get_timing_cache()
    if cache is None:
        log(f"no timing cache to save to {path} (TensorRT kept none for this build)")
        return
    if previous:
        old = config.create_timing_cache(previous)
        if old is not None and not cache.combine(old, False):
            log(f"could not merge the previous entries of {path}; saving this build's only")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, bytes(cache.serialize()))
    except OSError as exc:
        log(f"could not save the timing cache {path} ({exc}); the engine is written")


def _load_back(trt: Any, logger: Any, plan: bytes, version_compatible: bool) -> Any:
    """Deserialize the plan the way the runtime will (host code allowed for a
    version-compatible plan, which embeds the lean runtime)."""
    runtime = trt.Runtime(logger)
    if version_compatible:
        runtime.engine_host_code_allowed = True
    return runtime.deserialize_cuda_engine(plan)


def _io_specs(trt: Any, engine: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    import numpy as np

    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dims = [int(d) for d in tuple(engine.get_tensor_shape(name))]
        shape: list[int | str] = ["batch" if d == -1 and j == 0 else d for j, d in enumerate(dims)]
        dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        (inputs if is_input else outputs).append(TensorSpec(name, dtype, shape))
    return inputs, outputs


def _parse(trt: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any, Any]:
    """(builder, strongly typed network, parser) of ``onnx_path``; the parser owns the
    network's weights, so it must live until the build."""
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ArtifactError(f"TensorRT cannot parse {onnx_path}:\n  " + "\n  ".join(errors))
    return builder, network, parser


def _builder_config(trt: Any, builder: Any, options: EngineOptions) -> Any:
    """The builder config: workspace, optimisation level, no TF32, compatibility flags."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * 2**30))
    config.builder_optimization_level = options.builder_optimization_level
    config.clear_flag(trt.BuilderFlag.TF32)
    if options.hardware_compatibility != "none":
        config.hardware_compatibility_level = getattr(
            trt.HardwareCompatibilityLevel, options.hardware_compatibility.upper()
        )
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    return config


def _add_profile(
    builder: Any, network: Any, config: Any, options: EngineOptions, onnx_path: Path
) -> dict[str, Any]:
    """Add the optimisation profile over the batch axis; return the sidecar's ``profile``."""
    profile = builder.create_optimization_profile()
    opt = options.resolved_opt_batch()
    shapes: dict[str, list[list[int]]] = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = [int(d) for d in tuple(tensor.shape)[1:]]
        if any(d < 0 for d in rest):
            raise ArtifactError(f"{onnx_path}: input {tensor.name} has a dynamic non-batch axis")
        lo, mid, hi = ([b, *rest] for b in (options.min_batch, opt, options.max_batch))
        profile.set_shape(tensor.name, lo, mid, hi)
        shapes[tensor.name] = [lo, mid, hi]
    if config.add_optimization_profile(profile) < 0:
        raise ArtifactError(f"TensorRT refused the optimisation profile {shapes} of {onnx_path}")
    return {
        "min_batch": options.min_batch,
        "opt_batch": opt,
        "max_batch": options.max_batch,
        "shapes": shapes,
    }


@dataclass(frozen=True)
class _Built:
    """What one build made that its sidecar records."""

    engine_path: Path
    onnx_path: Path
    role: str
    precision: str
    profile: dict[str, Any]
    cache_path: Path | None
    start: float


def _sidecar(
    trt: Any,
    gpu: GpuInfo,
    options: EngineOptions,
    manifest: Manifest,
    spec: GraphSpec,
    built: _Built,
    io: tuple[list[TensorSpec], list[TensorSpec]],
) -> EngineSidecar:
    """The engine's sidecar (the source's hash and the build's seconds taken now)."""
    inputs, outputs = io
    return EngineSidecar(
        engine_file=built.engine_path.name,
        source_onnx=spec.file,
        source_sha256=sha256_file(built.onnx_path),
        role=built.role,
        precision=built.precision,
        tensorrt_version=trt.__version__,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        profile=built.profile,
        inputs=inputs,
        outputs=outputs,
        preprocessing={
            "input_size": manifest.input_size,
            "max_tokens": manifest.max_tokens,
            "mask_threshold": manifest.mask_threshold,
            "pixel_mean": manifest.pixel_mean,
            "pixel_std": manifest.pixel_std,
            "tokenizer": manifest.tokenizer,
        },
        build={
            "workspace_gb": options.workspace_gb,
            "builder_optimization_level": options.builder_optimization_level,
            "strongly_typed": True,
            "tf32": False,
            "timing_cache": str(built.cache_path) if built.cache_path else None,
            "seconds": round(time.perf_counter() - built.start, 1),
            "command": options.rerun_command(),
        },
        hardware_compatibility=options.hardware_compatibility,
        version_compatible=options.version_compatible,
    )


def build_engine(
    trt: Any,
    gpu: GpuInfo,
    options: EngineOptions,
    manifest: Manifest,
    role: str,
    spec: GraphSpec,
    precision: str,
    log: Callable[[str], None] = print,
) -> Path:
    """Build ``role``'s engine from its ``precision`` graph; write the engine and its sidecar."""
    export_dir = options.export_dir
    onnx_path = export_dir / spec.file
    engine_path = export_dir / engine_file(spec.file)
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder, network, _parser = _parse(trt, logger, onnx_path)  # _parser: keeps the weights
    config = _builder_config(trt, builder, options)
    profile = _add_profile(builder, network, config, options, onnx_path)
    cache_path = (
        timing_cache_file(options.timing_cache, gpu.compute_capability, trt.__version__)
        if options.timing_cache is not None
        else None
    )
    previous_cache = _attach_timing_cache(trt, config, cache_path, log)
    built = _Built(engine_path, onnx_path, role, precision, profile, cache_path, start)

    log(f"{role}: building {engine_path.name} (TensorRT {trt.__version__}, {precision}) ...")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ArtifactError(
            f"TensorRT failed to build {onnx_path.name}; see the TensorRT log above"
        )
    plan_bytes = bytes(serialized)
    engine = _load_back(trt, logger, plan_bytes, options.version_compatible)
    if engine is None:
        raise ArtifactError(
            f"TensorRT built {engine_path.name} but cannot load it back; see the TensorRT log above"
        )
    sidecar = _sidecar(trt, gpu, options, manifest, spec, built, _io_specs(trt, engine))
    write_bytes_atomic(engine_path, plan_bytes)
    write_sidecar(engine_path, sidecar)
    if cache_path is not None:  # after the engine is committed: a cache error cannot lose it
        _save_timing_cache(trt, config, cache_path, previous_cache, log)
    return engine_path
