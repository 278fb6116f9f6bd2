"""What a verified precision records: the machine it was verified on, and the stored pairs
that re-verify it on another kind of CPU (the rule: :mod:`dit_deploy.runtime.verified_on`)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from ..hints import command
from ..runtime.backends import open_backend
from ..runtime.backends.table import default_backend
from ..runtime.cpu_numerics import numerics, this_machine, verdict
from ..runtime.export import Export
from ..runtime.graph_chain import GraphChain
from ..runtime.manifest import Manifest, verify_files
from ..runtime.verified_on import (
    STORED_PAIRS,
    PrecisionMismatchError,
    StoredPairs,
    agreement,
    backend_version,
    read_pairs,
    record_for,
    reverify,
    round_feeds,
)
from .chain import PairInputs, chains
from .samples import PairSource
from .verify import LayoutReport


def stored_pairs(
    export_dir: Path,
    manifest: Manifest,
    prepare: PairInputs,
    layouts: Sequence[str],
    source: PairSource,
) -> tuple[StoredPairs, bool]:
    """The export's stored pairs if they are intact, made from these FP32 graphs and cover
    ``layouts`` (False), else new ones: the first ``STORED_PAIRS`` of ``source`` with no
    FP32 logits yet (True; :func:`layout_agreement` adds each layout's)."""
    hashes = {role: spec.sha256 for role, spec in manifest.graphs.items()}
    if manifest.verification_pairs:
        try:
            pairs = read_pairs(export_dir, manifest)
            if pairs.fp32_sha256 == hashes and set(pairs.reference) >= set(layouts):
                return pairs, False
        except ArtifactError:
            pass  # damaged or stale: made again below
    feeds, _ = prepare(list(itertools.islice(source, STORED_PAIRS)))
    return StoredPairs(round_feeds(feeds), {}, hashes), True


def layout_agreement(
    pairs: StoredPairs, layout: str, fp32: GraphChain, candidate: GraphChain, threshold: float
) -> float:
    """The stored pairs' mask agreement of ``candidate`` with FP32 in ``layout`` (the FP32
    logits computed and kept in ``pairs`` if it has none for the layout yet)."""
    if layout not in pairs.reference:
        pairs.reference[layout] = fp32.logits(pairs.feeds)
    return agreement(candidate.logits(pairs.feeds), pairs.reference[layout], threshold)


def scheme_of(precision: str, weight_bits: int) -> dict[str, Any]:
    """How a precision's graphs were made, as far as CPU numerics depend on it."""
    return {"weight_bits": weight_bits} if precision == "int8" else {}


def verification_entry(
    precision: str,
    scheme: Mapping[str, Any],
    backend: str,
    stored: Mapping[str, float],
    reports: list[LayoutReport],
) -> dict[str, Any]:
    """``verified[precision]`` after a verification on this machine: the scheme and one
    record (``stored``: layout -> the stored pairs' agreement measured here,
    :func:`layout_agreement`)."""
    measured = {
        r.layout: {
            "pairs": r.pairs,
            "mask_iou": round(r.mask_iou, 6),
            "miou_change_points": round(r.miou_change * 100, 4),
            "logits_rel_error": round(r.logits_rel_error, 6),
        }
        for r in reports
    }
    record = record_for(
        this_machine(), precision, scheme, backend, backend_version(backend), stored, measured
    )
    return {"scheme": dict(scheme), "on": [record]}


def reverify_here(
    export_dir: str | Path,
    precision: str,
    backend: str | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """``dit-deploy verify``: run ``precision``'s stored pairs on this CPU; if every layout
    agrees with FP32 within ``REVERIFY_TOLERANCE`` of the recorded agreement, add this
    machine to ``verified[precision]`` (the manifest replaced atomically). Returns the new
    record; raises :class:`PrecisionMismatchError` (nothing written) otherwise."""
    export = Export.open(export_dir)
    export_dir, manifest = export.path, export.manifest
    table = {role: manifest.graph(role, precision, export_dir) for role in manifest.graphs}
    verify_files(export_dir, manifest, list(table), precision)
    again = command("quantize", export_dir, "--precision", precision)
    entry = manifest.verified.get(precision)
    if not entry or not entry.get("on") or not manifest.verification_pairs:
        raise PrecisionMismatchError(
            f"{export_dir}'s {precision} graphs have no stored verification pairs (made by an "
            f"older dit-deploy); verify them here in full with: {again}"
        )
    machine = this_machine()
    scheme = entry.get("scheme", {})
    if numerics(precision, scheme, machine) is None:
        raise PrecisionMismatchError(verdict(precision, entry, machine, True).reason)
    backend = backend or default_backend(precision)

    def opener(role: str, path: Path):
        return open_backend(backend, path, threads=threads, execution=table[role].execution)

    candidate = chains(manifest.graph_files(export_dir, precision), threads, opener)
    wanted, got = {}, {}
    for layout, chain in candidate.items():
        got[layout], wanted[layout] = reverify(
            export_dir, manifest, precision, layout, chain.logits
        )
    short = [k for k in got if got[k] < wanted[k]]
    if short:
        raise PrecisionMismatchError(
            f"{precision} on this CPU ({machine.family}): the stored pairs' masks agree with FP32 "
            + ", ".join(f"{k} {got[k]:.4f} < {wanted[k]:.4f}" for k in short)
            + f"; nothing recorded. Quantize for this CPU here with: {again}"
        )
    record = record_for(machine, precision, scheme, backend, backend_version(backend), got)
    same = (record["numerics"], record["kernels"])
    kept = [r for r in entry["on"] if (r.get("numerics"), r.get("kernels")) != same]
    verified = {**manifest.verified, precision: {**entry, "on": [*kept, record]}}
    export.write(Manifest(**{**manifest.__dict__, "verified": verified}))
    return record
