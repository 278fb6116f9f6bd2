"""``*.engine.json``: what a TensorRT engine was built from, for and with (torch/TensorRT-free).

A TensorRT plan runs only on the TensorRT version and the GPU architecture it was built for
(unless built version- or hardware-compatible). The sidecar beside
``<role>.<precision>.engine`` records both, plus the source ONNX's sha256, the optimisation
profile, the I/O tensors and the preprocessing constants. It is validated against a schema
when read (a typed error names the file, the field and what was expected), and
:func:`engine_verdict` applies TensorRT's own compatibility rules to it before TensorRT is
even imported, so a runtime refuses a mismatched engine with the command that rebuilds it.

The rules are TensorRT's (and the C++ runtime applies the same ones, checked against the
same table of cases, ``tests/fixtures/engine_compat_cases.json``):

- TensorRT version: without version compatibility the running major.minor.patch must equal
  the builder's; with it, the runtime must not be older than the builder and either of the
  same major or TensorRT 11 running a TensorRT 10 engine (the 11.x support matrix).
- GPU: without hardware compatibility (``none``) and with ``same_compute_capability`` the
  compute capability must be the builder's; another GPU model of that architecture runs the
  engine (H100 SXM vs PCIe, a MIG slice) and TensorRT only warns, so do we.
  ``ampere_plus`` needs compute capability >= 8.0.
- Source: when the export's sha256 of the ONNX graph is known, the engine must be built from
  that graph.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..errors import ArtifactError
from .manifest import GRAPH_PRECISIONS, TensorSpec

SIDECAR_VERSION = 1
HARDWARE_COMPAT = ("none", "ampere_plus", "same_compute_capability")
PRECISIONS = GRAPH_PRECISIONS  # an engine is built from a graph file of the export
# (builder major, runtime major) pairs TensorRT runs version-compatible engines across
VERSION_COMPAT_MAJORS = ((10, 10), (11, 11), (10, 11))


class EngineMismatchError(ArtifactError):
    """An engine was built for another TensorRT version, GPU, or source graph: rebuild it."""


@dataclass(frozen=True)
class EngineSidecar:
    """The contents of ``<engine>.json``. ``inputs``/``outputs`` use the manifest's
    :class:`TensorSpec` (``"batch"`` marks the profile's dynamic axis)."""

    engine_file: str
    source_onnx: str
    source_sha256: str
    role: str
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.9"
    profile: dict[str, Any]  # {"min_batch", "opt_batch", "max_batch", "shapes": {name: [3 shapes]}}
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)  # options, seconds, rebuild command
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    sidecar_version: int = SIDECAR_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def min_batch(self) -> int:
        return int(self.profile["min_batch"])

    @property
    def max_batch(self) -> int:
        return int(self.profile["max_batch"])

    def rebuild_command(self, export_dir: str | Path | None = None) -> str:
        """The command that rebuilds this engine on the machine it is meant to run on."""
        if self.build.get("command"):
            return str(self.build["command"])
        where = str(export_dir) if export_dir is not None else "EXPORT_DIR"
        return (
            f"dit-deploy engines {where} --precision {self.precision} --max-batch {self.max_batch}"
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
    """Write the sidecar atomically."""
    return write_text_atomic(sidecar_path(engine), json.dumps(sidecar.to_dict(), indent=2) + "\n")


# ------------------------------------------------------------------------------ schema
_VERSION_RE = re.compile(r"^\d+(\.\d+){1,3}([.+\-]?[0-9A-Za-z.]*)?$")
_CC_RE = re.compile(r"^\d+\.\d+$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _string(pattern: re.Pattern | None = None, choices: tuple[str, ...] = ()):
    def check(v: Any) -> bool:
        if not isinstance(v, str) or not v:
            return False
        if choices and v not in choices:
            return False
        return pattern is None or bool(pattern.match(v))

    return check


_FIELDS: dict[str, tuple[Any, str]] = {
    "engine_file": (_string(), "a file name (string)"),
    "source_onnx": (_string(), "a file name (string)"),
    "source_sha256": (_string(_SHA_RE), "64 lowercase hex digits"),
    "role": (_string(), "a graph role (string)"),
    "precision": (_string(choices=PRECISIONS), f"one of {', '.join(PRECISIONS)}"),
    "tensorrt_version": (_string(_VERSION_RE), 'a version string such as "10.13.3.9"'),
    "gpu_name": (_string(), "the GPU's name (string)"),
    "compute_capability": (_string(_CC_RE), 'a string "major.minor" such as "9.0"'),
    "profile": (lambda v: isinstance(v, dict), "an object"),
    "inputs": (lambda v: isinstance(v, list) and bool(v), "a non-empty list of tensors"),
    "outputs": (lambda v: isinstance(v, list) and bool(v), "a non-empty list of tensors"),
    "preprocessing": (lambda v: isinstance(v, dict), "an object"),
    "build": (lambda v: isinstance(v, dict), "an object"),
    "hardware_compatibility": (
        _string(choices=HARDWARE_COMPAT),
        f"one of {', '.join(HARDWARE_COMPAT)}",
    ),
    "version_compatible": (lambda v: isinstance(v, bool), "true or false"),
    "sidecar_version": (_is_int, "an integer"),
}
_REQUIRED = (
    "engine_file",
    "source_onnx",
    "source_sha256",
    "role",
    "precision",
    "tensorrt_version",
    "gpu_name",
    "compute_capability",
    "profile",
    "inputs",
    "outputs",
)


def _describe(v: Any) -> str:
    text = json.dumps(v) if not isinstance(v, str) else repr(v)
    return f"{text[:40]} ({type(v).__name__})"


def _tensor(path: Path, where: str, data: Any) -> TensorSpec:
    def bad(what: str, expected: str, got: Any) -> ArtifactError:
        return ArtifactError(
            f"{path}: field {where}{what} must be {expected}, got {_describe(got)}; "
            "rebuild the engine"
        )

    if not isinstance(data, dict):
        raise bad("", 'an object {"name", "dtype", "shape"}', data)
    name, dtype, shape = data.get("name"), data.get("dtype"), data.get("shape")
    if not isinstance(name, str) or not name:
        raise bad(".name", "a string", name)
    if not isinstance(dtype, str) or not dtype:
        raise bad(".dtype", "a numpy dtype name (string)", dtype)
    if not isinstance(shape, list) or not all(_is_int(d) or d == "batch" for d in shape):
        raise bad(".shape", 'a list of integers (-1 or "batch" for the batch axis)', shape)
    return TensorSpec(name, dtype, ["batch" if d in (-1, "batch") else int(d) for d in shape])


def validate_sidecar(data: Any, path: Path) -> EngineSidecar:
    """``data`` (parsed JSON) checked field by field against the sidecar schema.

    Raises:
        ArtifactError: naming ``path``, the field, what was expected and what was found.
    """
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: must hold a JSON object, got {_describe(data)}; rebuild")
    version = data.get("sidecar_version")
    if version != SIDECAR_VERSION:
        raise ArtifactError(
            f"{path} has sidecar version {version!r}, this dit-deploy reads {SIDECAR_VERSION}; "
            "rebuild the engine"
        )
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ArtifactError(f"{path}: unknown field(s) {unknown}; rebuild the engine")
    for name in _REQUIRED:
        if name not in data:
            raise ArtifactError(f"{path}: missing field {name!r}; rebuild the engine")
    for name, value in data.items():
        check, expected = _FIELDS[name]
        if not check(value):
            raise ArtifactError(
                f"{path}: field {name!r} must be {expected}, got {_describe(value)}; "
                "rebuild the engine"
            )
    profile = data["profile"]
    for key in ("min_batch", "opt_batch", "max_batch"):
        value = profile.get(key)
        if not _is_int(value) or value < 1:
            raise ArtifactError(
                f"{path}: field 'profile.{key}' must be an integer >= 1, got "
                f"{_describe(value)}; rebuild the engine"
            )
    if not profile["min_batch"] <= profile["opt_batch"] <= profile["max_batch"]:
        raise ArtifactError(
            f"{path}: field 'profile' must have min_batch <= opt_batch <= max_batch, got "
            f"{profile['min_batch']}, {profile['opt_batch']}, {profile['max_batch']}; rebuild"
        )
    fields = dict(data)
    for kind in ("inputs", "outputs"):
        fields[kind] = [_tensor(path, f"'{kind}[{i}]'", t) for i, t in enumerate(data[kind])]
    return EngineSidecar(**fields)


def read_sidecar(engine: str | Path) -> EngineSidecar:
    """Read and validate the sidecar of ``engine``; typed errors say what is wrong and the fix."""
    path = sidecar_path(engine)
    if not path.is_file():
        raise ArtifactError(
            f"{engine} has no sidecar {path.name}: it was not built by dit-deploy engines, so "
            "nothing says which TensorRT/GPU it is for; rebuild it with "
            "dit-deploy engines EXPORT_DIR --precision ..."
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); rebuild the engine") from exc
    return validate_sidecar(data, path)


# ------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Verdict:
    """What TensorRT would do with an engine here: refuse (``problems``) or run, perhaps
    with ``warnings``."""

    problems: list[str]
    warnings: list[str]


def parse_version(text: str) -> tuple[int, int, int]:
    """``"10.13.3.9"`` -> ``(10, 13, 3)``: TensorRT ties plans to major.minor.patch (the
    C++ ``getInferLibVersion`` reports exactly these three)."""
    parts = [int(p) for p in re.findall(r"\d+", str(text))[:3]]
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


def _cc(text: str) -> tuple[int, int]:
    major, _, minor = str(text).partition(".")
    return int(major), int(minor or 0)


def engine_verdict(
    sidecar: EngineSidecar,
    tensorrt_version: str | None,
    gpu_name: str | None,
    compute_capability: str | None,
    source_sha256: str | None = None,
) -> Verdict:
    """TensorRT's compatibility rules (see the module doc) for ``sidecar`` on this machine.

    A running fact given as None (TensorRT or the GPU not known here) is not judged, so the
    sidecar's other facts still are.
    """
    problems: list[str] = []
    warnings: list[str] = []
    built = sidecar.tensorrt_version
    if tensorrt_version is not None:
        b, r = parse_version(built), parse_version(tensorrt_version)
        if sidecar.version_compatible:
            if (b[0], r[0]) not in VERSION_COMPAT_MAJORS or r < b:
                problems.append(
                    f"TensorRT {tensorrt_version} cannot run a version-compatible engine "
                    f"built with TensorRT {built} (needs the same or a supported later major, "
                    "not older)"
                )
        elif b != r:
            problems.append(f"built with TensorRT {built}, running TensorRT {tensorrt_version}")
    hw = sidecar.hardware_compatibility
    if compute_capability is not None:
        if hw == "ampere_plus":
            if _cc(compute_capability) < (8, 0):
                problems.append(
                    f"an Ampere-plus engine needs compute capability >= 8.0, this GPU "
                    f"({gpu_name}) has {compute_capability}"
                )
        elif _cc(compute_capability) != _cc(sidecar.compute_capability):
            problems.append(
                f"built for compute capability {sidecar.compute_capability} "
                f"({sidecar.gpu_name}), this GPU ({gpu_name}) has {compute_capability}"
            )
        elif hw == "none" and gpu_name is not None and gpu_name != sidecar.gpu_name:
            warnings.append(
                f"built on {sidecar.gpu_name}, running on {gpu_name} (same compute capability: "
                "TensorRT runs it but warns; rebuild here for the best tactics)"
            )
    if source_sha256 is not None and sidecar.source_sha256 != source_sha256:
        problems.append(
            f"built from another version of {sidecar.source_onnx} (sha256 "
            f"{sidecar.source_sha256[:12]}..., the export has {source_sha256[:12]}...)"
        )
    return Verdict(problems, warnings)


def check_sidecar(
    sidecar: EngineSidecar,
    tensorrt_version: str | None,
    gpu_name: str | None,
    compute_capability: str | None,
    source_sha256: str | None = None,
    export_dir: str | Path | None = None,
    also_missing: list[str] | None = None,
) -> list[str]:
    """Refuse an engine the running TensorRT/GPU cannot run; return TensorRT's warnings.

    ``also_missing``: what this machine lacks besides (TensorRT, cuda-python), named in the
    same error so one attempt tells the user everything.

    Raises:
        EngineMismatchError: listing every mismatch (and ``also_missing``) and the rebuild
            command.
    """
    verdict = engine_verdict(sidecar, tensorrt_version, gpu_name, compute_capability, source_sha256)
    if verdict.problems:
        missing = "".join(f"; also: {m}" for m in also_missing or [])
        raise EngineMismatchError(
            f"engine {sidecar.engine_file} does not match this machine: "
            + "; ".join(verdict.problems)
            + missing
            + f". Rebuild it here with: {sidecar.rebuild_command(export_dir)}"
        )
    return verdict.warnings
