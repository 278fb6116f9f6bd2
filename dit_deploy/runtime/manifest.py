"""``manifest.json``: what an export directory holds and how to feed it (torch-free).

The manifest drives pre/post-processing in every runtime, so a runtime can never
disagree with the export it runs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ArtifactError

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1

# graph roles and their file names, per layout
SPLIT_GRAPHS = ("text_encoder", "dit_encoder", "mask_decoder")
FUSED_GRAPHS = ("dit_fused",)


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
    # fp32. Optional: a manifest without it (every export before issue 4) reads the same.
    precisions: dict[str, dict[str, GraphSpec]] = field(default_factory=dict)

    @property
    def layouts(self) -> list[str]:
        found = []
        if all(g in self.graphs for g in SPLIT_GRAPHS):
            found.append("split")
        if all(g in self.graphs for g in FUSED_GRAPHS):
            found.append("fused")
        return found

    def graph(self, role: str, precision: str = "fp32") -> GraphSpec:
        """The graph that runs ``role`` at ``precision`` (typed error naming the fix)."""
        if precision == "fp32":
            table = self.graphs
        elif precision in self.precisions:
            table = self.precisions[precision]
        else:
            have = ["fp32", *sorted(self.precisions)]
            raise ArtifactError(
                f"this export has no {precision} graphs (has: {', '.join(have)}); create them "
                f"with: python export/quantize.py EXPORT_DIR --precision {precision}"
            )
        if role not in table:
            raise ArtifactError(f"this export has no {precision} graph for {role!r}; re-run it")
        return table[role]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.precisions:
            data.pop("precisions")  # byte-identical to manifests written before issue 4
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
        path = Path(directory) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

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
    """Read and check an export directory's manifest; typed errors name the file and fix."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"export directory not found: {directory}")
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(
            f"{directory} has no {MANIFEST_FILE}: it is not a dit-deploy export directory. "
            "Create one with: python export/to_onnx.py --out " + str(directory)
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); re-export the model") from exc
    version = data.get("manifest_version") if isinstance(data, dict) else None
    if version != MANIFEST_VERSION:
        raise ArtifactError(
            f"{path} has manifest version {version!r}, this dit-deploy reads version "
            f"{MANIFEST_VERSION}; re-export with this version (python export/to_onnx.py ...)"
        )
    try:
        manifest = Manifest.from_dict(data)
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"{path} is incomplete or malformed ({exc}); re-export") from exc
    vocab = directory / manifest.tokenizer.get("vocab_file", "vocab.txt")
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
                    f"python export/quantize.py {directory} --precision {precision}"
                )
    return manifest
