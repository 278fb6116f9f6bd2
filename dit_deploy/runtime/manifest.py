"""``manifest.json``: what an export directory holds and how to feed it (torch-free).

The manifest drives pre/post-processing in every runtime, so a runtime can never
disagree with the export it runs.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..errors import ArtifactError
from ..hashing import sha256_file
from ..hints import command
from ..schema import NUMBER, MapOf, check
from ..tokenizer import WordPieceTokenizer

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
# the graph files an export can hold: fp32 is the export itself, quantize makes the others
GRAPH_PRECISIONS = ("fp32", "fp16", "int8")

# The one table of layouts: the graph roles of each, in the order they run. A graph takes its
# inputs by name from the prepared feeds and the outputs upstream (see runtime/graph_chain.py).
LAYOUT_ROLES: dict[str, tuple[str, ...]] = {
    "split": ("text_encoder", "dit_encoder", "mask_decoder"),
    "fused": ("dit_fused",),
}
SPLIT_GRAPHS = LAYOUT_ROLES["split"]
FUSED_GRAPHS = LAYOUT_ROLES["fused"]
# how reports name each role's stage
STAGE_LABELS = {
    "text_encoder": "text encoder",
    "dit_encoder": "DIT encoder",
    "mask_decoder": "decoder",
    "dit_fused": "fused model",
}

_TENSOR = {"name": str, "dtype": str, "shape": [(int, str)]}
_GRAPH = {
    "file": str,
    "inputs": [_TENSOR],
    "outputs": [_TENSOR],
    "sha256?": str,
    "precision?": str,
    "execution?": str,
}
MANIFEST_SCHEMA = {
    "config_name": str,
    "variant": str,
    "input_size": int,
    "max_tokens": int,
    "mask_threshold": NUMBER,
    "pixel_mean": [NUMBER],
    "pixel_std": [NUMBER],
    "tokenizer": {"vocab_file": str, "lowercase": bool, "max_tokens": int, "sha256?": str},
    "graphs": MapOf(_GRAPH),
    "config?": dict,
    "versions?": MapOf(str),
    "source?": dict,
    "opset?": int,
    "manifest_version": int,
    "precisions?": MapOf(MapOf(_GRAPH)),
    "precision_plan?": {"file": str, "sha256": str},
    # precision -> how it was made and the machines it was verified on (runtime/verified_on.py)
    "verified?": MapOf(
        {
            "scheme": dict,
            "on": [
                {
                    "numerics": str,
                    "kernels": str,
                    "backend": str,
                    "backend_version": str,
                    "stored_pairs_agreement": MapOf(NUMBER),
                }
            ],
        }
    ),
    "verification_pairs?": {"file": str, "sha256": str},
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, float16, int64
    shape: list[int | str]  # "batch" marks the dynamic axis


@dataclass(frozen=True)
class GraphSpec:
    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    sha256: str = ""
    precision: str = "fp32"
    # an execution precision of an unchanged graph file ("openvino-bf16": the FP32 graph run
    # in BF16 by OpenVINO); "" = the graph's own types decide
    execution: str = ""


@dataclass(frozen=True)
class Manifest:
    """The contents of ``manifest.json``."""

    config_name: str
    variant: str
    input_size: int
    max_tokens: int
    mask_threshold: float
    pixel_mean: list[float]
    pixel_std: list[float]
    tokenizer: dict[str, Any]  # vocab_file, lowercase, max_tokens, sha256
    graphs: dict[str, GraphSpec]  # role -> graph
    config: dict[str, Any] = field(default_factory=dict)  # the full DIT config
    versions: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # checkpoint name + sha256
    opset: int = 17
    manifest_version: int = MANIFEST_VERSION
    # extra graphs by precision ("fp16", "int8"): precision -> role -> graph. ``graphs`` is
    # fp32. Optional: a manifest without it (an FP32-only export) reads the same.
    precisions: dict[str, dict[str, GraphSpec]] = field(default_factory=dict)
    # the automatic precision search's plan (precision/plan.py): {"file", "sha256"}; optional
    precision_plan: dict[str, str] = field(default_factory=dict)
    # precision -> {"scheme": {...}, "on": [verified-on records]} (runtime/verified_on.py)
    verified: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the stored pairs a precision is re-verified on at load: {"file", "sha256"}
    verification_pairs: dict[str, str] = field(default_factory=dict)

    @property
    def layouts(self) -> list[str]:
        return [
            layout
            for layout, roles in LAYOUT_ROLES.items()
            if all(role in self.graphs for role in roles)
        ]

    def graph(
        self, role: str, precision: str = "fp32", directory: str | Path | None = None
    ) -> GraphSpec:
        """The graph that runs ``role`` at ``precision`` (typed error naming the fix)."""
        if precision == "fp32":
            table = self.graphs
        elif precision in self.precisions:
            table = self.precisions[precision]
        else:
            have = ["fp32", *sorted(self.precisions)]
            fix = command("quantize", directory or "EXPORT_DIR", "--precision", precision)
            if precision == "bf16":
                from .cpu_numerics import this_machine

                if not this_machine().has_bf16_units:  # quantize would refuse it here
                    fix = (
                        "BF16 is made and verified on a CPU with BF16 units (AVX512-BF16 or "
                        f"AMX), which this one lacks: run {fix} there, or use "
                        f"{' or '.join(p for p in have if p != 'fp32') or 'fp32'} here"
                    )
                    raise ArtifactError(
                        f"this export has no bf16 graphs (has: {', '.join(have)}); {fix}"
                    )
            raise ArtifactError(
                f"this export has no {precision} graphs (has: {', '.join(have)}); create them "
                f"with: {fix}"
            )
        if role not in table:
            raise ArtifactError(
                f"this export has no {precision} graph for {role!r}; re-run: "
                f"{command('quantize', directory or 'EXPORT_DIR', '--precision', precision)}"
            )
        return table[role]

    def graph_files(self, directory: str | Path, precision: str = "fp32") -> dict[str, Path]:
        """Role -> the graph file of every role at ``precision`` (FP32 where not converted)."""
        table = self.graphs if precision == "fp32" else self.precisions.get(precision, {})
        return {role: Path(directory) / table.get(role, g).file for role, g in self.graphs.items()}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.precisions:
            data.pop("precisions")  # FP32-only manifests keep their original bytes
        for optional in ("precision_plan", "verified", "verification_pairs"):
            if not data[optional]:
                data.pop(optional)  # manifests without them keep their original bytes
        for table in (data["graphs"], *data.get("precisions", {}).values()):
            for graph in table.values():
                if not graph["execution"]:
                    del graph["execution"]  # only execution precisions carry the field
        return data

    def metadata_props(self) -> dict[str, str]:
        """Flat string metadata for ONNX ``metadata_props`` and engine sidecars."""
        return {
            "dit.config_name": self.config_name,
            "dit.variant": self.variant,
            "dit.input_size": str(self.input_size),
            "dit.max_tokens": str(self.max_tokens),
            "dit.mask_threshold": str(self.mask_threshold),
            "dit.pixel_mean": json.dumps(self.pixel_mean),
            "dit.pixel_std": json.dumps(self.pixel_std),
            "dit.tokenizer": json.dumps(self.tokenizer, sort_keys=True),
            "dit.versions": json.dumps(self.versions, sort_keys=True),
            "dit.source": json.dumps(self.source, sort_keys=True),
            "dit.manifest_version": str(self.manifest_version),
        }

    def write(self, directory: str | Path) -> Path:
        """Write ``manifest.json`` atomically (a reader sees the old or the new one)."""
        return write_text_atomic(
            Path(directory) / MANIFEST_FILE, json.dumps(self.to_dict(), indent=2) + "\n"
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        graphs = _graphs_from_dict(data.pop("graphs"))
        precisions = {
            name: _graphs_from_dict(table) for name, table in data.pop("precisions", {}).items()
        }
        return cls(graphs=graphs, precisions=precisions, **data)


def _graphs_from_dict(table: dict[str, Any]) -> dict[str, GraphSpec]:
    return {
        role: GraphSpec(
            file=g["file"],
            inputs=[TensorSpec(**t) for t in g["inputs"]],
            outputs=[TensorSpec(**t) for t in g["outputs"]],
            sha256=g.get("sha256", ""),
            precision=g.get("precision", "fp32"),
            execution=g.get("execution", ""),
        )
        for role, g in table.items()
    }


def read_manifest(directory: str | Path) -> Manifest:
    """Read and check an export directory's manifest; typed errors name the file and fix.

    Checks the JSON's structure field by field, and that every graph and the vocabulary
    exist. File contents are checked against their recorded sha256 by :func:`verify_files`.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"export directory not found: {directory}")
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(
            f"{directory} has no {MANIFEST_FILE}: it is not a dit-deploy export directory. "
            f"Create one from your model with {command('export', '--out', directory)} and "
            "--checkpoint or --pretrained (see dit-deploy export --help)"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); re-export the model") from exc
    if not isinstance(data, dict):
        raise ArtifactError(
            f"{path} is a JSON {type(data).__name__}, not the object a manifest is; re-export "
            "the model"
        )
    version = data.get("manifest_version")
    if version != MANIFEST_VERSION:
        raise ArtifactError(
            f"{path} has manifest version {version!r}, this dit-deploy reads version "
            f"{MANIFEST_VERSION}; re-export with this version: "
            + command("export", "--out", directory)
        )
    check(data, MANIFEST_SCHEMA, str(path))
    known = set(Manifest.__dataclass_fields__)
    manifest = Manifest.from_dict({k: v for k, v in data.items() if k in known})
    _check_values(manifest, path)
    check_files(directory, manifest)
    return manifest


def _own_file(directory: Path, name: str, what: str) -> str:
    """``name`` if it is a plain file name (the export is self-contained: no path, no ``..``),
    else the typed error; the C++ reader applies the same rule."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ArtifactError(
            f"{directory / MANIFEST_FILE} names {what} {name!r}, which is not a file of the "
            "export directory (a plain file name, no path); re-export the model"
        )
    return name


def check_files(directory: Path, manifest: Manifest) -> None:
    """Every graph and the vocabulary ``manifest`` names exist in ``directory`` as plain file
    names (typed errors naming the fix); contents are :func:`verify_files`' job."""
    _own_file(directory, manifest.tokenizer["vocab_file"], "its vocabulary")
    for graph in [*manifest.graphs.values(), *(g for t in manifest.precisions.values()
                                               for g in t.values())]:  # fmt: skip
        _own_file(directory, graph.file, "graph")
    for name in ("precision_plan", "verification_pairs"):
        entry = getattr(manifest, name)
        if entry:
            _own_file(directory, entry["file"], name.replace("_", " "))
    vocab = directory / manifest.tokenizer["vocab_file"]
    if not vocab.is_file():
        raise ArtifactError(
            f"{directory} is missing its tokenizer vocabulary {vocab.name}; copy the model's "
            "vocab.txt there or re-export"
        )
    for role, graph in manifest.graphs.items():
        if not (directory / graph.file).is_file():
            raise ArtifactError(f"{directory} is missing graph {graph.file} ({role}); re-export")
    for precision, table in manifest.precisions.items():
        for role, graph in table.items():
            if not (directory / graph.file).is_file():
                raise ArtifactError(
                    f"{directory} is missing {precision} graph {graph.file} ({role}); re-run "
                    f"{command('quantize', directory, '--precision', precision)}"
                )


def _check_values(manifest: Manifest, path: Path) -> None:
    """What the schema's types cannot say (the same rules as the C++ reader's): one mean and
    one positive std per RGB channel, an input size that is a positive multiple of 4 (the
    logits are a quarter of it), room for [CLS] x [SEP] in the same token count the
    tokenizer uses, a finite threshold."""
    problems = []
    for name in ("pixel_mean", "pixel_std"):
        values = getattr(manifest, name)
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            problems.append(f"field {name} must be 3 finite numbers (R, G, B), got {values!r}")
    if len(manifest.pixel_std) == 3 and not all(v > 0 for v in manifest.pixel_std):
        problems.append(f"field pixel_std must be positive, got {manifest.pixel_std!r}")
    if manifest.input_size <= 0 or manifest.input_size % 4:
        problems.append(
            f"field input_size must be a positive multiple of 4, got {manifest.input_size!r}"
        )
    if manifest.max_tokens < 3 or manifest.tokenizer["max_tokens"] != manifest.max_tokens:
        problems.append(
            f"field max_tokens must be >= 3 and equal tokenizer.max_tokens, got "
            f"{manifest.max_tokens!r} and {manifest.tokenizer['max_tokens']!r}"
        )
    if not math.isfinite(manifest.mask_threshold):
        problems.append(f"field mask_threshold must be finite, got {manifest.mask_threshold!r}")
    for precision, record in manifest.verified.items():
        for entry in record.get("on", []):
            for layout, value in entry.get("stored_pairs_agreement", {}).items():
                if not 0.0 <= value <= 1.0:  # an agreement is an IoU
                    problems.append(
                        f"verified.{precision} stored_pairs_agreement.{layout} must be in "
                        f"[0, 1], got {value!r}"
                    )
    if problems:
        raise ArtifactError(f"{path}: " + "; ".join(problems) + "; re-export the model")


# sha256 by (resolved path, size, mtime): a file is hashed once per process until it changes
_HASHES: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def cached_sha256(path: Path) -> str:
    """sha256 of ``path``, cached by size and modification time."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        if key in _HASHES:
            return _HASHES[key]
    digest = sha256_file(path)
    with _HASH_LOCK:
        _HASHES[key] = digest
    return digest


def verify_file(path: Path, recorded: str, what: str) -> None:
    """Raise ArtifactError if ``path``'s sha256 differs from the recorded one, or if none is
    recorded (an unrecorded hash would turn the check off without a word)."""
    if not recorded:
        raise ArtifactError(
            f"{MANIFEST_FILE} records no sha256 for {path} ({what}), so it cannot be checked; "
            "re-export (or re-quantize) to record it; from Python, Predictor(..., verify=False) "
            "skips the check, only for a file you trust"
        )
    if cached_sha256(path) != recorded:
        raise ArtifactError(
            f"{path} ({what}) changed since it was written: its sha256 differs from the one "
            f"recorded in {MANIFEST_FILE}. Re-create it (re-export / re-quantize); from Python, "
            "Predictor(..., verify=False) skips the check, only for a file you trust"
        )


def verify_files(
    directory: str | Path, manifest: Manifest, roles: list[str] | tuple[str, ...], precision: str
) -> None:
    """Check the vocabulary and the graphs of ``roles`` at ``precision`` against their hashes."""
    directory = Path(directory)
    tok = manifest.tokenizer
    verify_file(directory / tok["vocab_file"], tok.get("sha256", ""), "tokenizer vocabulary")
    for role in roles:
        spec = manifest.graph(role, precision, directory)
        verify_file(directory / spec.file, spec.sha256, f"{precision} graph {role}")


def open_tokenizer(directory: str | Path, manifest: Manifest) -> WordPieceTokenizer:
    """The tokenizer an export was made with (its vocabulary file and settings)."""
    tok = manifest.tokenizer
    return WordPieceTokenizer.from_vocab_file(
        Path(directory) / tok["vocab_file"],
        lowercase=tok["lowercase"],
        max_tokens=tok["max_tokens"],
    )
