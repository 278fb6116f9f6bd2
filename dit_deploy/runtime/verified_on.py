"""Verified-on records: check them at load, re-verify on the stored pairs (torch-free).

An export that holds verified precisions also holds ``verification_pairs.npz``: a few prepared
(image, expression) pairs (the image as float16, exactly as fed) and the FP32 graphs' low-res
logits for them, per layout. ``manifest.json`` records its sha256 and, per precision, the
machines it was verified on (:mod:`.cpu_numerics`) with the low-res mask agreement those
pairs had there. On a CPU whose numerics class is not among them, :func:`check_here` runs the
pairs through the opened chain and accepts the precision only if their agreement with the FP32
logits is within ``REVERIFY_TOLERANCE`` of the recorded one (and the logits are finite);
otherwise a :class:`PrecisionMismatchError` says why and how to re-verify here.
"""

from __future__ import annotations

import io
import json
import math
import threading
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_bytes_atomic
from ..errors import ArtifactError
from ..hints import command
from .cpu_numerics import REVERIFY_TOLERANCE, Machine, numerics, this_machine, verdict
from .manifest import Manifest, cached_sha256, verify_file

PAIRS_FILE = "verification_pairs.npz"
STORED_PAIRS = 8


class PrecisionMismatchError(ArtifactError):
    """A precision verified on another kind of CPU does not hold (or cannot be checked) here."""


@dataclass(frozen=True)
class StoredPairs:
    """Prepared inputs (name -> (N, ...)) and FP32 low-res logits per layout (N, 1, h, w)."""

    feeds: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    fp32_sha256: dict[str, str]  # role -> the FP32 graph the references came from

    def to_bytes(self) -> bytes:
        arrays = {f"feed:{k}": v for k, v in self.feeds.items()}
        arrays |= {f"fp32:{k}": v for k, v in self.reference.items()}
        arrays["meta"] = np.frombuffer(json.dumps(self.fp32_sha256).encode(), np.uint8)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()


def round_feeds(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feeds as they are stored: float inputs through float16 (half the bytes); the
    references are computed from these rounded inputs, so nothing is lost for the check."""
    return {
        k: (v.astype(np.float16).astype(v.dtype) if v.dtype.kind == "f" else v)
        for k, v in feeds.items()
    }


def write_pairs(directory: Path, pairs: StoredPairs) -> str:
    """Write ``verification_pairs.npz`` atomically; returns its sha256."""
    stored = {k: v.astype(np.float16) if v.dtype.kind == "f" else v for k, v in pairs.feeds.items()}
    data = StoredPairs(stored, pairs.reference, pairs.fp32_sha256).to_bytes()
    path = write_bytes_atomic(Path(directory) / PAIRS_FILE, data)
    return cached_sha256(path)


def read_pairs(directory: Path, manifest: Manifest) -> StoredPairs:
    """The stored pairs, hash-checked against the manifest (typed errors name the fix)."""
    ref = manifest.verification_pairs
    if not ref:
        raise ArtifactError(f"{directory} has no stored verification pairs")
    path = Path(directory) / ref["file"]
    if not path.is_file():
        raise ArtifactError(f"{directory} is missing {ref['file']}; re-run dit-deploy quantize")
    verify_file(path, ref["sha256"], "verification pairs")
    try:
        with np.load(path) as data:
            feeds = {k[5:]: data[k] for k in data.files if k.startswith("feed:")}
            reference = {k[5:]: data[k] for k in data.files if k.startswith("fp32:")}
            meta = json.loads(bytes(data["meta"]).decode())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{path} is unreadable ({exc}); re-run dit-deploy quantize") from exc
    feeds = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in feeds.items()}
    return StoredPairs(feeds, reference, meta)


def logit_threshold(mask_threshold: float) -> float:
    """``sigmoid(x) > t`` <=> ``x > log(t / (1 - t))``."""
    t = min(max(mask_threshold, 1e-7), 1 - 1e-7)
    return math.log(t / (1.0 - t))


def agreement(logits: np.ndarray, reference: np.ndarray, mask_threshold: float) -> float:
    """Pooled IoU of the low-res masks of ``logits`` and ``reference`` (1.0 when both empty;
    0.0 when ``logits`` is not finite)."""
    if not np.isfinite(logits).all():
        return 0.0
    cut = logit_threshold(mask_threshold)
    a, b = logits > cut, reference > cut
    union = int(np.logical_or(a, b).sum())
    return float(np.logical_and(a, b).sum()) / union if union else 1.0


def backend_version(backend: str) -> str:
    """The installed version of a backend's distribution (``unknown`` when absent)."""
    from importlib import metadata

    try:
        return metadata.version(backend)
    except metadata.PackageNotFoundError:
        return "unknown"


def record_for(
    machine: Machine,
    precision: str,
    scheme: Mapping[str, Any],
    backend: str,
    backend_version: str,
    stored: Mapping[str, float],
    measured: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One "verified on" entry: the machine's numerics class and kernel family, what ran the
    check, the stored pairs' agreement per layout and (on a full verification) the measured
    agreement on the held-out pairs."""
    from .. import __version__

    return {
        "numerics": numerics(precision, scheme, machine) or "",
        "kernels": machine.family,
        "flags": machine.describe(),
        "backend": backend,
        "backend_version": backend_version,
        "dit_deploy": __version__,
        "stored_pairs_agreement": {k: round(float(v), 6) for k, v in stored.items()},
        **({"measured": dict(measured)} if measured else {}),
    }


# (export dir, precision, layout, the graphs' sha256s, the record, why) already re-verified
_ACCEPTED: set[tuple[str, ...]] = set()
_LOCK = threading.Lock()


def check_here(
    directory: Path,
    manifest: Manifest,
    precision: str,
    layout: str,
    logits: Callable[[dict[str, np.ndarray]], np.ndarray],
    machine: Machine | None = None,
) -> str:
    """Apply the verified-on rule to ``precision`` on this CPU before it serves anything.

    Returns ``run`` (verified on this numerics class) or ``reverified`` (another class; the
    stored pairs pass through ``logits``, the opened chain of ``layout``). Raises
    :class:`PrecisionMismatchError` with the command that re-verifies here otherwise."""
    machine = machine or this_machine()
    record = manifest.verified.get(precision)
    can = bool(manifest.verification_pairs) and bool(record)
    decision = verdict(precision, record, machine, can)
    if decision.action == "run":
        return "run"
    fix = command("verify", directory, "--precision", precision)
    if decision.action == "refuse":
        raise PrecisionMismatchError(f"{decision.reason}: {fix}")
    assert record is not None
    hashes = tuple(g.sha256 for g in manifest.precisions.get(precision, {}).values())
    recorded = json.dumps([record, manifest.verification_pairs], sort_keys=True)
    key = (str(Path(directory).resolve()), precision, layout, *hashes, recorded, decision.reason)
    with _LOCK:
        if key in _ACCEPTED:
            return "reverified"
    got, wanted = reverify(directory, manifest, precision, layout, logits)
    if got < wanted:
        raise PrecisionMismatchError(
            f"{decision.reason}, and there its stored pairs' masks agree with FP32 at "
            f"{got:.4f} < {wanted:.4f} (recorded minus {REVERIFY_TOLERANCE}): do not use "
            f"{precision} on this CPU; quantize for it here with "
            + command("quantize", directory, "--precision", precision)
        )
    with _LOCK:
        _ACCEPTED.add(key)
    return "reverified"


def reverify(
    directory: Path,
    manifest: Manifest,
    precision: str,
    layout: str,
    logits: Callable[[dict[str, np.ndarray]], np.ndarray],
) -> tuple[float, float]:
    """(agreement here, the least agreement accepted) of the stored pairs of ``layout``."""
    pairs = read_pairs(directory, manifest)
    if layout not in pairs.reference:
        raise ArtifactError(f"{directory}'s verification pairs have no {layout} references")
    stale = sorted(r for r, g in manifest.graphs.items() if pairs.fp32_sha256.get(r) != g.sha256)
    if stale:  # references of other FP32 graphs would judge these against the wrong masks
        raise ArtifactError(
            f"{directory}'s verification pairs were computed with other FP32 graphs than its "
            f"{', '.join(stale)}; re-run "
            + command("quantize", directory, "--precision", precision)
        )
    recorded = [
        r["stored_pairs_agreement"][layout]
        for r in manifest.verified[precision]["on"]
        if layout in r.get("stored_pairs_agreement", {})
    ]
    if not recorded:
        raise PrecisionMismatchError(
            f"the {precision} record has no stored-pair agreement for {layout}: "
            + command("quantize", directory, "--precision", precision)
        )
    got = agreement(logits(pairs.feeds), pairs.reference[layout], manifest.mask_threshold)
    return got, max(recorded) - REVERIFY_TOLERANCE
