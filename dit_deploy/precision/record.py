"""What a verified precision records: the machine it was verified on, and the stored pairs
that re-verify it on another kind of CPU (the rule: :mod:`dit_deploy.runtime.verified_on`)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from ..runtime.cpu_numerics import this_machine
from ..runtime.graph_chain import GraphChain
from ..runtime.manifest import Manifest
from ..runtime.verified_on import (
    STORED_PAIRS,
    StoredPairs,
    agreement,
    read_pairs,
    record_for,
    round_feeds,
)
from .chain import PairInputs
from .samples import PairSource
from .verify import LayoutReport


def stored_pairs(
    export_dir: Path,
    manifest: Manifest,
    prepare: PairInputs,
    fp32: Mapping[str, GraphChain],
    source: PairSource,
) -> tuple[StoredPairs, bool]:
    """The export's stored pairs if they are intact and made from these FP32 graphs (False),
    else new ones: the first ``STORED_PAIRS`` of ``source`` and their FP32 logits (True)."""
    hashes = {role: spec.sha256 for role, spec in manifest.graphs.items()}
    if manifest.verification_pairs:
        try:
            pairs = read_pairs(export_dir, manifest)
            if pairs.fp32_sha256 == hashes and set(pairs.reference) >= set(fp32):
                return pairs, False
        except ArtifactError:
            pass  # damaged or stale: made again below
    feeds, _ = prepare(list(itertools.islice(source, STORED_PAIRS)))
    feeds = round_feeds(feeds)
    reference = {layout: chain.logits(feeds) for layout, chain in fp32.items()}
    return StoredPairs(feeds, reference, hashes), True


def scheme_of(precision: str, weight_bits: int) -> dict[str, Any]:
    """How a precision's graphs were made, as far as CPU numerics depend on it."""
    return {"weight_bits": weight_bits} if precision == "int8" else {}


def verification_entry(
    precision: str,
    scheme: Mapping[str, Any],
    backend: str,
    candidate: Mapping[str, GraphChain],
    pairs: StoredPairs,
    reports: list[LayoutReport],
    threshold: float,
) -> dict[str, Any]:
    """``verified[precision]`` after a verification on this machine: the scheme and one
    record (the stored pairs' agreement measured through ``candidate`` here)."""
    stored = {
        layout: agreement(chain.logits(pairs.feeds), pairs.reference[layout], threshold)
        for layout, chain in candidate.items()
    }
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
        this_machine(), precision, scheme, backend, _version(backend), stored, measured
    )
    return {"scheme": dict(scheme), "on": [record]}


def _version(backend: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(backend)
    except metadata.PackageNotFoundError:
        return "unknown"
