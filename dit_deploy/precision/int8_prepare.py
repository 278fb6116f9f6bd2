"""What INT8 needs before any graph is converted, in two passes per layout.

1. **Calibration pass** (the calibration pairs, :mod:`.calibration_pass`): one FP32 forward of
   the layout per pair gives every graph's channel maxima (smoothing) and the absolute
   maxima of every tensor INT8 quantizes (the MinMax ranges).
2. **Smoothing check** (the first :data:`SMOOTH_CHECK_PAIRS` held-out pairs): one forward
   per pair gives the smoothable MatMul inputs, from which :class:`.smooth.Int8ErrorEstimate`
   decides per activation whether smoothing lowers its INT8 error.

Then each graph is smoothed where it helps and its ranges are written as ONNX Runtime's
calibration cache, so ``quantize_static`` calibrates nothing. Both results are cached (the
smoothing measurements by graph, pairs and strength; the ranges by the graph quantized), and
a pass runs only for the graphs whose entries are missing. The split layout's graphs are
observed in one run of the chain, not one run of the upstream graphs per graph.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..exporters.onnx_io import save_onnx
from ..hashing import sha256_file
from ..runtime.manifest import LAYOUT_ROLES, Manifest, cached_sha256
from .calibration_pass import (
    GraphStats,
    ObservedLayout,
    calibrated_tensors,
    collect_stats,
    smoothed_ranges,
    stats_model,
    write_range_cache,
)
from .chain import PairInputs
from .int8 import Int8Options, cache_file
from .samples import PairSource
from .smooth import (
    MIN_GAIN,
    Int8ErrorEstimate,
    Smoothing,
    SmoothingCache,
    channel_sizes,
    smooth,
    smoothable,
)

SMOOTH_CHECK_PAIRS = 8  # held-out pairs that decide, per activation, whether to smooth
ProgressFactory = Callable[[str, int], Callable[[int], None]]


@dataclass
class Int8Sources:
    """Role -> the FP32 graph to convert (the export's, or a smoothed copy), role -> the
    activations smoothed, and the roles whose ranges this run measured (not a cache hit)."""

    files: dict[str, Path] = field(default_factory=dict)
    smoothed: dict[str, list[str]] = field(default_factory=dict)
    measured_ranges: set[str] = field(default_factory=set)


@dataclass
class Int8Inputs:
    """The pairs and options the two passes read."""

    calib: PairSource
    held_out: PairSource  # not the calibration pairs, nor the verdict's
    int8: Int8Options
    cache_dir: Path
    threads: int | None = None


def _feeds(prepare: PairInputs, source: PairSource, limit: int, bar: Callable[[int], None]):
    for pair in itertools.islice(source, limit):
        feeds, _ = prepare([pair])
        yield feeds
        bar(1)


def int8_sources(
    export_dir: Path,
    manifest: Manifest,
    roles: Sequence[str],
    inputs: Int8Inputs,
    prepare: PairInputs,
    tmp: Path,
    log: Callable[[str], None],
    progress: ProgressFactory,
    reuse: Mapping[str, Sequence[str]] | None = None,
) -> Int8Sources:
    """The graphs to convert for ``roles`` (see the module docstring); ``reuse``: role -> the
    activations a precision plan smoothed, instead of the smoothing check's choice."""
    files = manifest.graph_files(export_dir)
    out = Int8Sources()
    for layout, layout_roles in LAYOUT_ROLES.items():
        mine = [r for r in layout_roles if r in roles]
        if mine:
            shas = {r: manifest.graphs[r].sha256 or sha256_file(files[r]) for r in mine}
            _prepare_layout(layout, files, mine, shas, inputs, prepare, tmp, log, progress,
                            reuse, out)  # fmt: skip
    return out


class _LazyModels(dict):
    """Role -> FP32 ``ModelProto``, each read from its file on first use (a ViT-B graph is
    hundreds of MB; the calibration pass needs every role of a layout, a cached role none)."""

    def __init__(self, files: Mapping[str, Path]) -> None:
        super().__init__()
        self._files = files

    def __missing__(self, role: str):
        import onnx

        self[role] = model = onnx.load(str(self._files[role]))
        return model


def _prepare_layout(layout, files, mine, shas, inputs, prepare, tmp, log, progress, reuse, out):
    int8, alpha = inputs.int8, inputs.int8.smooth
    minmax = int8.method == "minmax"
    models = _LazyModels(files)  # where the caches hit, the other roles are never read
    caches = {
        r: SmoothingCache(models[r], inputs.cache_dir, r, shas[r], [inputs.calib, inputs.held_out],
                          alpha, int8.weight_levels)
        for r in mine if alpha is not None
    }  # fmt: skip
    found: dict[str, Smoothing | None] = {r: c.load() for r, c in caches.items()}
    sources: dict[str, tuple[object, Path]] = {}  # role -> (the graph to convert, its file)
    ranges_missing = set()
    for role in mine:
        if alpha is None or found[role] is not None:
            sources[role] = _source(role, models[role], files[role], found.get(role), reuse, tmp,
                                    log, cached=True)  # fmt: skip
            if minmax and not _range_cache(inputs, role, sources[role][1]).is_file():
                ranges_missing.add(role)
    need_stats = {
        r for r in mine if (alpha is not None and found[r] is None) or r in ranges_missing
    }
    stats: dict[str, GraphStats] = {}
    if need_stats:
        observe = {
            r: (calibrated_tensors(models[r], int8.op_types) if minmax else (),
                channel_sizes(models[r]) if alpha is not None else {})
            for r in LAYOUT_ROLES[layout] if r in need_stats
        }  # fmt: skip
        bar = progress(f"calibrate {layout}", len(inputs.calib))
        feeds = _feeds(prepare, inputs.calib, len(inputs.calib), bar)
        stats = collect_stats(layout, models, observe, feeds, inputs.threads)
    unsmoothed = [r for r in mine if r not in sources]
    if unsmoothed:
        errors = _smoothing_check(layout, models, unsmoothed, stats, inputs, prepare, progress)
        for role in unsmoothed:
            found[role] = Smoothing(alpha, stats[role].channel_max, errors[role])
            caches[role].save(found[role])
            sources[role] = _source(role, models[role], files[role], found[role], reuse, tmp, log)
    for role in mine:
        model, path = sources[role]
        out.files[role] = path
        if alpha is not None:
            out.smoothed[role] = _smoothed_names(model)
        if minmax and role in stats:
            if found.get(role) is not None:  # the maxima the migration scales came from
                stats[role].channel_max.update(found[role].maxima)
            write_range_cache(_range_cache(inputs, role, path), smoothed_ranges(model, stats[role]))
            out.measured_ranges.add(role)


def _range_cache(inputs: Int8Inputs, role: str, path: Path) -> Path:
    return cache_file(inputs.cache_dir, role, cached_sha256(path), inputs.calib, inputs.int8)


def _smoothed_names(model) -> list[str]:
    from .smooth import SMOOTH_SUFFIX

    return sorted(
        n.input[0]
        for n in model.graph.node
        if n.op_type == "Mul" and n.name.endswith(SMOOTH_SUFFIX)
    )


def _source(role, model, file, found, reuse, tmp, log, cached=False):
    """(the graph to convert, its file): ``model`` itself, or smoothed per ``found``."""
    if found is None:
        return model, Path(file)
    strengths = found.strengths()
    why = f"smoothing the others lowers their INT8 error by less than {MIN_GAIN:.0%}"
    if reuse is not None:
        strengths = {name: found.alpha for name in reuse[role] if name in found.maxima}
        why = "as the plan says"
    smoothed, _changed = smooth(model, found.maxima, strengths)
    path = tmp / f"{role}.smoothed.onnx"
    save_onnx(smoothed, path)
    log(
        f"{role}: {len(strengths)} of {len(found.errors)} MatMul/Gemm input(s) smoothed "
        f"(alpha {found.alpha}; {why})" + (" [cached]" if cached else "")
    )
    return smoothed, path


def _smoothing_check(layout, models, roles, stats, inputs, prepare, progress):
    """Role -> activation -> (INT8 error as is, smoothed), over the held-out pairs, every
    role of ``roles`` observed in one run of the layout per pair."""
    consumers = {r: sorted(smoothable(models[r])) for r in roles}
    runner = ObservedLayout(
        layout,
        models,
        lambda r: stats_model(models[r], (), {}, consumers[r]) if r in roles else None,
        inputs.threads,
    )
    # after the sessions: the weights' INT8 codes are not needed while they are built
    levels = inputs.int8.weight_levels
    estimates = {
        r: Int8ErrorEstimate(models[r], stats[r].channel_max, inputs.int8.smooth,
                             weight_levels=levels)
        for r in roles
    }  # fmt: skip
    limit = min(len(inputs.held_out), SMOOTH_CHECK_PAIRS)
    bar = progress(f"smoothing check {layout}", limit)
    try:
        for feeds in _feeds(prepare, inputs.held_out, limit, bar):
            observed = runner.run(feeds)
            for role, estimate in estimates.items():
                estimate.add(observed[role])
    finally:
        runner.close()
    return {r: e.result() for r, e in estimates.items()}
