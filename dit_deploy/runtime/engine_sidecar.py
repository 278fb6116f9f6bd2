"""``*.engine.json``: what a TensorRT engine was built from, for and with (torch/TensorRT-free).

A TensorRT plan runs only on the TensorRT version and the GPU it was built for (unless built
version- or hardware-compatible). The sidecar beside ``<role>.<precision>.engine`` records
both, plus the source ONNX's sha256, the optimisation profile, the I/O tensors and the
preprocessing constants, so that a runtime can refuse a mismatched engine with the exact
command that rebuilds it, before TensorRT fails with a less helpful message.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from ..hashing import sha256_file  # noqa: F401  (re-exported for callers)

SIDECAR_VERSION = 1
HARDWARE_COMPAT = ("none", "ampere_plus", "same_compute_capability")


class EngineMismatchError(ArtifactError):
    """An engine was built for another TensorRT version, GPU, or source graph: rebuild it."""


@dataclass(frozen=True)
class EngineSidecar:
    """The contents of ``<engine>.json``."""

    engine_file: str
    source_onnx: str
    source_sha256: str
    role: str
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.9"
    profile: dict[
        str, Any
    ]  # {"min_batch", "opt_batch", "max_batch", "shapes": {name: [min, opt, max]}}
    inputs: list[dict[str, Any]]  # [{"name", "dtype", "shape"}]; -1 / "batch" = dynamic
    outputs: list[dict[str, Any]]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)  # options, seconds, rebuild command
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    sidecar_version: int = SIDECAR_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def max_batch(self) -> int:
        return int(self.profile["max_batch"])

    def rebuild_command(self, export_dir: str | Path | None = None) -> str:
        """The command that rebuilds this engine on the machine it is meant to run on."""
        if self.build.get("command"):
            return str(self.build["command"])
        where = str(export_dir) if export_dir is not None else "EXPORT_DIR"
        return (
            f"python export/to_trt.py {where} --precision {self.precision} "
            f"--max-batch {self.max_batch}"
        )


def engine_file(graph_file: str) -> str:
    """``dit_encoder.int8.onnx`` -> ``dit_encoder.int8.engine``; FP32 -> ``<role>.fp32.engine``."""
    stem = graph_file.removesuffix(".onnx")
    return (stem if "." in stem else stem + ".fp32") + ".engine"


def sidecar_path(engine: str | Path) -> Path:
    """``x.engine`` -> ``x.engine.json``."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def write_sidecar(engine: str | Path, sidecar: EngineSidecar) -> Path:
    path = sidecar_path(engine)
    path.write_text(json.dumps(sidecar.to_dict(), indent=2) + "\n")
    return path


def read_sidecar(engine: str | Path) -> EngineSidecar:
    """Read the sidecar of ``engine``; typed errors say how to get one."""
    path = sidecar_path(engine)
    if not path.is_file():
        raise ArtifactError(
            f"{engine} has no sidecar {path.name}: it was not built by export/to_trt.py, so "
            "nothing says which TensorRT/GPU it is for; rebuild it with "
            "python export/to_trt.py EXPORT_DIR --precision ..."
        )
    try:
        data = json.loads(path.read_text())
        if data.get("sidecar_version") != SIDECAR_VERSION:
            raise ArtifactError(
                f"{path} has sidecar version {data.get('sidecar_version')!r}, this dit-deploy "
                f"reads {SIDECAR_VERSION}; rebuild the engine"
            )
        return EngineSidecar(**data)
    except (json.JSONDecodeError, TypeError) as exc:
        raise ArtifactError(f"{path} is malformed ({exc}); rebuild the engine") from exc


def _cc(text: str) -> tuple[int, int]:
    major, _, minor = str(text).partition(".")
    return int(major), int(minor or 0)


def check_sidecar(
    sidecar: EngineSidecar,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    source_sha256: str | None = None,
    export_dir: str | Path | None = None,
) -> None:
    """Refuse an engine the running TensorRT/GPU cannot (or should not) run.

    Rules: without version compatibility the TensorRT version must be identical; with it,
    the same major version and not older than the builder. Without hardware compatibility
    the GPU (name and compute capability) must be the one it was built on; ``ampere_plus``
    needs compute capability >= 8.0, ``same_compute_capability`` the same one. If
    ``source_sha256`` is given, the engine must have been built from that ONNX graph.

    Raises:
        EngineMismatchError: listing every mismatch and the rebuild command.
    """
    problems: list[str] = []
    built, running = sidecar.tensorrt_version, tensorrt_version
    if sidecar.version_compatible:
        b, r = _version(built), _version(running)
        if b[0] != r[0] or r < b:
            problems.append(
                f"TensorRT {running} cannot run a version-compatible engine from TensorRT {built} "
                "(needs the same major version, not older)"
            )
    elif built != running:
        problems.append(f"built with TensorRT {built}, running TensorRT {running}")
    hw = sidecar.hardware_compatibility
    if hw == "ampere_plus":
        if _cc(compute_capability) < (8, 0):
            problems.append(
                f"an Ampere-plus engine needs compute capability >= 8.0, this GPU "
                f"({gpu_name}) has {compute_capability}"
            )
    elif hw == "same_compute_capability" or hw == "none":
        if _cc(compute_capability) != _cc(sidecar.compute_capability):
            problems.append(
                f"built for compute capability {sidecar.compute_capability} "
                f"({sidecar.gpu_name}), this GPU ({gpu_name}) has {compute_capability}"
            )
        elif hw == "none" and gpu_name != sidecar.gpu_name:
            problems.append(f"built on {sidecar.gpu_name}, running on {gpu_name}")
    if source_sha256 is not None and sidecar.source_sha256 != source_sha256:
        problems.append(
            f"built from another version of {sidecar.source_onnx} (sha256 "
            f"{sidecar.source_sha256[:12]}..., the export has {source_sha256[:12]}...)"
        )
    if problems:
        raise EngineMismatchError(
            f"engine {sidecar.engine_file} does not match this machine: "
            + "; ".join(problems)
            + f". Rebuild it here with: {sidecar.rebuild_command(export_dir)}"
        )


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in str(text).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)
