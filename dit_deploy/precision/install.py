"""The last steps of :func:`~.pipeline.run_quantize`: a verified precision installed in
the export.

An execution precision (``bf16``: the FP32 graph files run at another precision by a backend,
OpenVINO for BF16) has no graph to convert: :func:`execution_candidate` opens the FP32 files
at that precision instead. Once every layout keeps the accuracy floor, :func:`verification`
records what the precision was verified on and :func:`install` moves the new graphs from the
temporary directory into the export as ``<role>.<precision>.onnx`` (none for an execution
precision), writes the precision plans and the stored verification pairs, and replaces
``manifest.json`` atomically with one that lists the precision, its plan and that record.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ArtifactError
from ..hashing import sha256_file
from ..runtime.backends import open_backend
from ..runtime.backends.table import default_backend, execution_for
from ..runtime.export import Export
from ..runtime.graph_chain import GraphChain, layout_of
from ..runtime.manifest import GraphSpec, Manifest, verify_file
from ..runtime.verified_on import PAIRS_FILE, StoredPairs, write_pairs
from .chain import chains
from .plan import PLAN_FILE, PrecisionPlan, read_plans, write_plans
from .record import scheme_of, verification_entry
from .verify import LayoutReport


@dataclass
class GraphOutcome:
    role: str
    file: str
    precision: str
    seconds: float
    size_bytes: int
    fp32_size_bytes: int
    detail: dict[str, object] = field(default_factory=dict)


def execution_of(precision: str) -> tuple[str, str] | None:
    """(backend, manifest ``execution`` value) of a precision that runs the FP32 graph files
    at another precision (the backend table's executions); None for graph precisions."""
    found = execution_for(precision)
    return (found[0], found[1].name) if found else None


def execution_candidate(
    export: Export,
    roles: Sequence[str],
    precision: str,
    threads: int | None,
    log: Callable[[str], None],
) -> tuple[dict[str, GraphChain], list[GraphOutcome]]:
    """The FP32 graphs opened at an execution precision (``roles``; the rest as they are)."""
    export_dir, manifest = export.path, export.manifest
    backend, execution = execution_of(precision) or ("", "")
    files = manifest.graph_files(export_dir)

    def opener(role: str, path: Path):
        mode = execution if role in roles else ""
        return open_backend(backend, path, threads=threads, execution=mode, cache_dir=False)

    candidate = chains(files, threads, opener)
    outcomes = []
    for role in roles:
        start = time.perf_counter()
        candidate[layout_of(role)].backend(role)  # compiles now: a CPU without BF16 is refused here
        size = files[role].stat().st_size
        outcomes.append(
            GraphOutcome(
                role,
                manifest.graphs[role].file,
                precision,
                time.perf_counter() - start,
                size,
                size,
                {"execution": execution, "backend": backend},
            )
        )
        log(f"{role:<13} -> {files[role].name} run as {execution} (no new file)")
    return candidate, outcomes


def existing_plans(export_dir: Path, manifest: Manifest) -> dict[str, PrecisionPlan]:
    """The plans the export records (hash checked), to keep the other precisions' entries."""
    ref = manifest.precision_plan
    if not ref:
        return {}
    path = export_dir / ref["file"]
    if not path.is_file():
        raise ArtifactError(f"{export_dir} is missing its {ref['file']}; re-run the --auto search")
    verify_file(path, ref["sha256"], "precision plan")
    return read_plans(path)


@dataclass(frozen=True)
class Verified:
    """A precision's ``verified`` entry, and new stored pairs to write (None: keep them)."""

    entry: dict
    pairs: StoredPairs | None


def verification(
    precision: str,
    weight_bits: int,
    pairs: StoredPairs,
    fresh: bool,
    stored: dict[str, float],
    reports: list[LayoutReport],
) -> Verified:
    """What ``precision`` was verified on: the ``verified`` entry (``stored``: layout -> the
    stored pairs' agreement here), and the stored pairs if ``fresh`` (new ones to write)."""
    entry = verification_entry(
        precision, scheme_of(precision, weight_bits), default_backend(precision), stored, reports
    )
    return Verified(entry, pairs if fresh else None)


def install(
    export: Export,
    tmp: Path,
    files: dict[str, Path],
    roles: Sequence[str],
    precision: str,
    plan: PrecisionPlan | None,
    verified: Verified,
) -> None:
    """Move the new graphs (the plan, the stored pairs) in, then replace the manifest
    atomically."""
    export_dir, manifest = export.path, export.manifest
    table: dict[str, GraphSpec] = {}
    for role, spec in manifest.graphs.items():
        if role in roles and (found := execution_of(precision)):
            mode = found[1]
            table[role] = GraphSpec(
                spec.file, spec.inputs, spec.outputs, spec.sha256, precision, mode
            )
        elif role in roles:
            name = files[role].name
            for extra in tmp.glob(name + "*"):  # the graph and any external-data file
                os.replace(extra, export_dir / extra.name)
            table[role] = GraphSpec(
                name, spec.inputs, spec.outputs, sha256_file(export_dir / name), precision
            )
        else:
            table[role] = spec  # kept FP32: the same file
    plans = existing_plans(export_dir, manifest)
    plans.pop(precision, None)  # a plan describes the graphs it made, not their successors
    if plan is not None:
        plans[precision] = plan
    reference: dict[str, str] = {}
    if plans:
        path = write_plans(export_dir / PLAN_FILE, plans)
        reference = {"file": PLAN_FILE, "sha256": sha256_file(path)}
    elif (export_dir / PLAN_FILE).is_file() and manifest.precision_plan:
        (export_dir / PLAN_FILE).unlink()
    pairs_ref = dict(manifest.verification_pairs)
    if verified.pairs is not None:
        pairs_ref = {"file": PAIRS_FILE, "sha256": write_pairs(export_dir, verified.pairs)}
    updated = Manifest(
        **{
            **manifest.__dict__,
            "precisions": {**manifest.precisions, precision: table},
            "precision_plan": reference,
            "verified": {**manifest.verified, precision: verified.entry},
            "verification_pairs": pairs_ref,
        }
    )
    export.write(updated)
