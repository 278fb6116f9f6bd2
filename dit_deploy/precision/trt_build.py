"""Typed ONNX graph -> TensorRT engine + ``*.engine.json`` sidecar. One code path, TRT 10 and 11.

Precision comes from the graph (FP16 types, Q/DQ nodes), never from builder flags: the
network is created strongly typed (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, which
TensorRT 10 needs and TensorRT 11 accepts and ignores: it is always strongly typed and has
no FP16/INT8 flags, precision constraints or INT8 calibrators any more). No
``EXPLICIT_BATCH`` flag (the default in 10, removed in 11).

Only ever imported on a machine with ``tensorrt``; see :func:`gpu_unavailable_reason`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArtifactError, BackendUnavailableError, ConfigError
from ..runtime.backends.tensorrt import gpu_info
from ..runtime.engine_sidecar import (
    HARDWARE_COMPAT,
    EngineSidecar,
    engine_file,
    sha256_file,
    write_sidecar,
)
from ..runtime.manifest import GraphSpec, Manifest


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings (``export/to_trt.py`` flags)."""

    max_batch: int = 8
    opt_batch: int | None = None  # default: max(1, max_batch // 2)
    min_batch: int = 1
    workspace_gb: float = 4.0
    builder_optimization_level: int = 3
    timing_cache: Path | None = None
    hardware_compatibility: str = "none"
    version_compatible: bool = False

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

    def resolved_opt_batch(self) -> int:
        return self.opt_batch or max(1, self.max_batch // 2)


def _network_flags(trt) -> int:
    """Strongly typed: required for typed graphs in 10.x (since 10.0), always on in 11.x."""
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def build_engine(
    export_dir: Path,
    manifest: Manifest,
    role: str,
    spec: GraphSpec,
    precision: str,
    options: BuildOptions,
    command: str,
    log: Callable[[str], None] = print,
) -> EngineSidecar:
    """Build ``role``'s engine from its ``precision`` graph; write the engine and its sidecar."""
    import tensorrt as trt

    onnx_path = export_dir / spec.file
    engine_path = export_dir / engine_file(spec.file)
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ArtifactError(f"TensorRT cannot parse {onnx_path}:\n  " + "\n  ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * 2**30))
    config.builder_optimization_level = options.builder_optimization_level
    if options.hardware_compatibility == "ampere_plus":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    elif options.hardware_compatibility == "same_compute_capability":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)

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
    config.add_optimization_profile(profile)

    cache_blob = b""
    if options.timing_cache and options.timing_cache.is_file():
        cache_blob = options.timing_cache.read_bytes()
    timing_cache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(timing_cache, False)

    log(f"{role}: building {engine_path.name} (TensorRT {trt.__version__}, {precision}) ...")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendUnavailableError(
            f"TensorRT failed to build {onnx_path.name}; see the TensorRT log above"
        )
    tmp = engine_path.with_name(engine_path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(serialized)
    if options.timing_cache:
        options.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache = config.get_timing_cache()  # now holds this build's timings too
        with open(options.timing_cache, "wb") as f:
            f.write(timing_cache.serialize())

    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(tmp.read_bytes())
    io = {"inputs": [], "outputs": []}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        kind = "inputs" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "outputs"
        io[kind].append(
            {
                "name": name,
                "dtype": _dtype_name(trt.nptype(engine.get_tensor_dtype(name))),
                "shape": [int(d) for d in tuple(engine.get_tensor_shape(name))],
            }
        )
    gpu = gpu_info()
    sidecar = EngineSidecar(
        engine_file=engine_path.name,
        source_onnx=spec.file,
        source_sha256=sha256_file(onnx_path),
        role=role,
        precision=precision,
        tensorrt_version=trt.__version__,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        profile={
            "min_batch": options.min_batch,
            "opt_batch": opt,
            "max_batch": options.max_batch,
            "shapes": shapes,
        },
        inputs=io["inputs"],
        outputs=io["outputs"],
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
            "timing_cache": str(options.timing_cache) if options.timing_cache else None,
            "seconds": round(time.perf_counter() - start, 1),
            "command": command,
        },
        hardware_compatibility=options.hardware_compatibility,
        version_compatible=options.version_compatible,
    )
    tmp.replace(engine_path)
    write_sidecar(engine_path, sidecar)
    return sidecar


def _dtype_name(nptype) -> str:
    import numpy as np

    return np.dtype(nptype).name
