"""``run_quantize``: FP16/INT8 graphs for an export, verified, and only then written into it.

BF16 is an execution precision, not a graph: the FP32 graphs run in BF16 by OpenVINO on a
CPU with BF16 units. It is verified the same way (against the FP32 graphs in ONNX Runtime,
same floors) and recorded in the manifest as a ``bf16`` precision whose graphs are the FP32
files with ``execution: "openvino-bf16"``; no file is written but ``manifest.json``.

Graphs are produced in a temporary directory inside the export; each is checked
structurally (:mod:`.graph_checks`) and every layout is verified against FP32 on held-out
pairs (:mod:`.verify`). Below the floor, a :class:`~dit_deploy.errors.ValidationError` is
raised and the export is left exactly as it was. Otherwise the graphs are moved in as
``<role>.<precision>.onnx`` and ``manifest.json`` is replaced atomically with one that lists
them under ``precisions``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import __version__
from ..artifact_dir import clean_inner_leftovers
from ..errors import ConfigError, ValidationError
from ..exporters.onnx_io import save_onnx
from ..hashing import sha256_file
from ..runtime.export import Export
from ..runtime.graph_chain import GraphChain
from ..runtime.manifest import GraphSpec, Manifest, cached_sha256
from ..runtime.verified_on import StoredPairs
from .chain import PairInputs, chains
from .fp16 import DEFAULT_FP32_OPS, convert_fp16
from .graph_checks import fp16_problems, int8_problems
from .install import GraphOutcome, execution_candidate, execution_of, install, verification
from .int8 import (
    DEFAULT_OP_TYPES,
    Int8Options,
    Int8Result,
    StreamingCalibrationReader,
    batched_constant_matmuls,
    cache_file,
    decoder_attention_matmuls,
    default_cache_dir,
    quantize_int8,
    unknown_nodes,
)
from .int8_prepare import Int8Inputs, ProgressFactory, int8_sources
from .plan import PrecisionPlan, RolePlan, pairs_hash, read_plan
from .record import layout_agreement, stored_pairs
from .samples import PairSource
from .smooth import SMOOTH_SUFFIX
from .verify import (
    DEFAULT_FLOORS,
    Floor,
    LayoutReport,
    chain_latency_ms,
    compare_layout,
    default_floor,
)


def _no_progress(_desc: str, _total: int) -> Callable[[int], None]:
    return lambda _n: None


@dataclass
class QuantizeOptions:
    """Everything ``export/quantize.py`` can set."""

    precision: str
    calib: PairSource | None = None
    eval: PairSource | None = None
    keep_fp32: tuple[str, ...] = ()
    int8: Int8Options = field(default_factory=Int8Options)
    fp32_ops: tuple[str, ...] = DEFAULT_FP32_OPS
    fp32_nodes: tuple[str, ...] = ()
    floor: Floor | None = None
    cache_dir: Path | None = None
    threads: int | None = None
    latency_runs: int = 10
    eval_batch: int = 4
    auto: bool = False  # search the nodes to keep at higher precision (precision/auto.py)
    plan: Path | None = None  # reuse a precision_plan.json instead of searching
    search: PairSource | None = None  # the pairs the search gates on (default: see below)
    rank: str = "error_per_flop"  # INT8 --auto: the order nodes leave INT8 (auto.rank_nodes)
    search_margin: float = 0.25  # --auto gates on this much less loss than allowed
    search_rounds: int = 12  # FP16 --auto: rounds of adding the nodes adding the most error

    def resolved_floor(self) -> Floor:
        if self.floor is not None:
            return self.floor
        return default_floor(self.precision, self.auto)

    def resolved_search(self) -> PairSource:
        """The search's pairs: held out like ``eval``, but not the verification pairs."""
        if self.search is not None:
            return self.search
        assert self.eval is not None
        return PairSource(
            self.eval.data, self.eval.split, min(self.eval.size, 32), self.eval.seed + 1
        )


@dataclass
class QuantizeResult:
    export_dir: Path
    precision: str
    graphs: list[GraphOutcome]
    layouts: list[LayoutReport]
    floor: Floor
    written: bool = False
    plan: PrecisionPlan | None = None

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "export_dir": str(self.export_dir),
            "precision": self.precision,
            "written": self.written,
            "floor": self.floor.to_dict(),
            "graphs": [vars(g) for g in self.graphs],
            "layouts": [r.to_dict() for r in self.layouts],
        }
        if self.plan is not None:
            data["plan"] = self.plan.to_dict()
        return data


def _check_options(manifest: Manifest, opts: QuantizeOptions) -> list[str]:
    if opts.precision not in DEFAULT_FLOORS:
        raise ConfigError(f"precision {opts.precision!r}: choose one of {sorted(DEFAULT_FLOORS)}")
    unknown = [r for r in opts.keep_fp32 if r not in manifest.graphs]
    if unknown:
        raise ConfigError(
            f"--keep-fp32 {unknown}: this export's graphs are {list(manifest.graphs)}"
        )
    roles = [r for r in manifest.graphs if r not in opts.keep_fp32]
    if not roles:
        raise ConfigError("every graph is kept FP32 (--keep-fp32): nothing to convert")
    if opts.eval is None:
        raise ConfigError("no evaluation pairs: set QuantizeOptions.eval")
    if (opts.auto or opts.plan is not None) and execution_of(opts.precision):
        raise ConfigError(
            f"--auto/--plan choose nodes of a converted graph; {opts.precision} runs the FP32 "
            "graphs as they are: drop --auto/--plan"
        )
    if opts.auto and opts.plan is not None:
        raise ConfigError("--auto searches a plan and --plan reuses one: give one of them")
    if opts.auto and opts.calib is None:
        raise ConfigError("--auto needs calibration pairs: set QuantizeOptions.calib")
    return roles


def _stamp(model, base: dict[str, str], extra: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in sorted({**base, **extra}.items()):
        model.metadata_props.add(key=key, value=value)


def _tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    versions = {"dit_deploy": __version__, "onnx": onnx.__version__}
    versions["onnxruntime"] = onnxruntime.__version__
    try:
        import onnxconverter_common

        versions["onnxconverter_common"] = onnxconverter_common.__version__
    except ImportError:
        pass
    return versions


def _convert_one(
    role: str,
    src: Path,
    out: Path,
    spec: GraphSpec,
    opts: QuantizeOptions,
    prepare: PairInputs,
    fp32: dict[str, GraphChain],
    progress: ProgressFactory,
    extra: tuple[str, ...] = (),
    measured: bool = False,
) -> dict[str, object]:
    """Write ``out`` (``role`` at ``opts.precision``); returns what was done, for the report.
    ``measured``: this run's calibration pass wrote the role's ranges (not a cache hit)."""
    import onnx

    base = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    stamp = {
        "dit.precision": opts.precision,
        "dit.source_graph_sha256": spec.sha256 or sha256_file(src),
        "dit.precision_tools": json.dumps(_tool_versions(), sort_keys=True),
    }
    if opts.precision == "fp16":
        model = onnx.load(str(src))
        nodes = (*opts.fp32_nodes, *extra, *batched_constant_matmuls(model))
        model = convert_fp16(model, opts.fp32_ops, nodes)
        detail: dict[str, object] = {"fp32_ops": list(opts.fp32_ops), "fp32_nodes": list(nodes)}
        problems = fp16_problems(model, opts.fp32_ops)
    else:
        assert opts.calib is not None
        cache = cache_file(
            opts.cache_dir or default_cache_dir(),
            role,
            cached_sha256(src),  # the graph quantized: a smoothed copy has other tensors
            opts.calib,
            opts.int8,
        )
        graph = onnx.load(str(src), load_external_data=False)
        names = {n.name for n in graph.graph.node}
        excluded = [n for n in (*opts.int8.exclude, *extra) if n in names]
        fixed = (*batched_constant_matmuls(graph), *decoder_attention_matmuls(graph, role))
        excluded += [n for n in fixed if n not in excluded]
        del graph
        int8 = Int8Options(**{**vars(opts.int8), "exclude": tuple(excluded)})
        reader = None
        if not cache.is_file():  # not ranged by .int8_prepare (other calibration methods)
            bar = progress(f"calibrate {role}", len(opts.calib))
            reader = StreamingCalibrationReader(opts.calib, role, prepare, fp32, bar)
        result: Int8Result = quantize_int8(src, out, role, reader, cache, int8)
        model = onnx.load(str(out))
        detail = {
            "method": int8.method,
            "calibration": opts.calib.describe(),
            "calibration_cache": str(result.cache),
            "cache_hit": result.cache_hit and not measured,
            "op_types": list(int8.op_types),
            "excluded": excluded,
            "dequantize_nodes": result.quantized_nodes,
            "smooth_alpha": int8.smooth,
            "weight_bits": int8.weight_bits,
            "smoothed_activations": sum(n.name.endswith(SMOOTH_SUFFIX) for n in model.graph.node),
        }
        problems = int8_problems(model)
    if problems:
        raise ValidationError(
            f"{role}: the {opts.precision} graph is not what TensorRT needs:\n  "
            + "\n  ".join(problems[:20])
        )
    _stamp(model, base, {**stamp, "dit.precision_recipe": json.dumps(detail, sort_keys=True)})
    save_onnx(model, out)
    onnx.checker.check_model(str(out))
    return detail


def _check_int8(
    export_dir: Path, manifest: Manifest, roles: Sequence[str], opts: QuantizeOptions
) -> None:
    """INT8 needs calibration pairs, every ``--op-types`` op must occur in the graphs and
    every ``--exclude`` node must exist (ConfigError, before any work)."""
    if opts.precision == "int8" and opts.calib is None:
        raise ConfigError("INT8 needs calibration pairs (--calib-data, or generated scenes)")
    if opts.precision != "int8":
        return
    import onnx

    nodes = [
        n
        for r in roles
        for n in onnx.load(
            str(export_dir / manifest.graphs[r].file), load_external_data=False
        ).graph.node
    ]
    present = {n.op_type for n in nodes}
    # the defaults may be absent (a graph without Gemm); a named op that is absent is a typo
    absent = [t for t in opts.int8.op_types if t not in present and t not in DEFAULT_OP_TYPES]
    if absent:
        compute = sorted(present & {"MatMul", "Gemm", "Conv", "ConvTranspose"})
        raise ConfigError(
            f"--op-types {' '.join(absent)}: no such op in {', '.join(roles)} (op types are "
            f"case-sensitive ONNX names; these graphs' products are {' '.join(compute)})"
        )
    if opts.int8.exclude:
        names = [n.name for n in nodes]
        missing = unknown_nodes(names, opts.int8.exclude)
        if missing:
            raise ConfigError(
                f"--exclude {missing}: no such node in {roles}; list names with "
                "python -c \"import onnx; print([n.name for n in onnx.load('G.onnx').graph.node])\""
            )


def _verify_layouts(
    job: _Job, candidate: dict[str, GraphChain], floor: Floor, pairs: StoredPairs
) -> tuple[list[LayoutReport], dict[str, float]]:
    """Every layout of ``candidate`` compared with FP32 on the evaluation pairs (and timed),
    checked against ``floor``; and layout -> the stored ``pairs``' agreement. Each layout's
    graphs are closed once it is done: at ViT-B both layouts at two precisions held 6 GB."""
    opts, fp32, prepare = job.opts, job.fp32, job.prepare
    reports, stored = [], {}
    for layout in job.manifest.layouts:
        bar = job.progress(f"verify {layout}", len(opts.eval))
        report = compare_layout(
            layout,
            fp32[layout],
            candidate[layout],
            prepare,
            opts.eval,
            job.manifest.mask_threshold,
            opts.eval_batch,
            bar,
        )
        if opts.latency_runs > 0:
            feeds, _ = prepare([next(iter(opts.eval))])
            report.latency_fp32_ms = chain_latency_ms(fp32[layout], feeds, opts.latency_runs)
            report.latency_ms = chain_latency_ms(candidate[layout], feeds, opts.latency_runs)
        reports.append(report.check(floor))
        threshold = job.manifest.mask_threshold
        stored[layout] = layout_agreement(pairs, layout, fp32[layout], candidate[layout], threshold)
        fp32[layout].close()
        candidate[layout].close()
    return reports, stored


def run_quantize(
    export_dir: str | Path | Export,
    opts: QuantizeOptions,
    log: Callable[[str], None] = print,
    progress: ProgressFactory = _no_progress,
) -> QuantizeResult:
    """Produce, check and verify ``opts.precision`` graphs; write them only if all pass."""
    export = Export.open(export_dir)
    export_dir, manifest = export.path, export.manifest
    export.verify(list(manifest.graphs), "fp32")
    roles = _check_options(manifest, opts)
    _check_int8(export_dir, manifest, roles, opts)
    floor = opts.resolved_floor()
    prepare = PairInputs(export_dir, manifest)
    fp32 = chains(manifest.graph_files(export_dir), opts.threads)
    clean_inner_leftovers(export_dir, log)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".quantize.{opts.precision}-{os.getpid()}-", dir=export_dir)
    )
    try:
        plan = None
        if opts.plan is not None:
            plan = read_plan(opts.plan, opts.precision)
            plan.check_sources(_source_hashes(export_dir, manifest, roles), str(opts.plan))
            plan.check_smoothing(opts.int8.smooth if opts.precision == "int8" else None)
            log(f"reusing {opts.plan}: {_kept_summary(plan)}")
        reuse = {r: plan.roles[r].smoothed for r in roles} if plan is not None else None
        job = _Job(export_dir, manifest, roles, opts, prepare, fp32, tmp, log, progress)
        sources, smoothed = _int8_sources(job, reuse)
        if opts.auto:
            plan = _search(job, sources)
            for role, names in smoothed.items():
                plan.roles[role].smoothed = names
        extra = {r: plan.roles[r].nodes for r in roles} if plan is not None else {}
        if plan is not None and any(plan.roles[r].all_kept for r in roles):
            stay = [r for r in roles if plan.roles[r].all_kept]
            log(f"{', '.join(stay)}: no node stays {opts.precision}; kept FP32 as a whole")
            roles = [r for r in roles if r not in stay]
        files = dict(manifest.graph_files(export_dir))
        if execution_of(opts.precision):
            candidate, outcomes = execution_candidate(
                export, roles, opts.precision, opts.threads, log
            )
        else:
            outcomes = _convert_all(replace(job, roles=roles), files, sources, extra)
            candidate = chains(files, opts.threads)
        pairs, fresh = stored_pairs(export_dir, manifest, prepare, manifest.layouts, opts.eval)
        reports, stored = _verify_layouts(job, candidate, floor, pairs)
        result = QuantizeResult(export_dir, opts.precision, outcomes, reports, floor, plan=plan)
        failed = [r for r in reports if not r.ok]
        if failed:
            raise QuantizeFailed(
                result,
                f"{opts.precision} graphs below the accuracy floor; nothing written to "
                f"{export_dir}:\n  "
                + "\n  ".join(f"{r.layout}: {'; '.join(r.failures)}" for r in failed),
            )
        verified = verification(
            opts.precision, opts.int8.weight_bits, pairs, fresh, stored, reports
        )
        install(export, tmp, files, roles, opts.precision, plan, verified)
        result.written = True
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _source_hashes(export_dir: Path, manifest: Manifest, roles: Sequence[str]) -> dict[str, str]:
    return {
        r: manifest.graphs[r].sha256 or sha256_file(export_dir / manifest.graphs[r].file)
        for r in roles
    }


def _kept_summary(plan: PrecisionPlan) -> str:
    parts = [f"{role} {len(r.kept)}" for role, r in plan.roles.items()]
    share = plan.int8_flop_share
    text = "nodes kept at higher precision: " + ", ".join(parts)
    return text + (
        f"; INT8 share of MatMul/Gemm/Conv FLOPs {share:.1%}" if share is not None else ""
    )


@dataclass
class _Job:
    """What the steps of one :func:`run_quantize` share."""

    export_dir: Path
    manifest: Manifest
    roles: Sequence[str]
    opts: QuantizeOptions
    prepare: PairInputs
    fp32: dict[str, GraphChain]
    tmp: Path
    log: Callable[[str], None]
    progress: ProgressFactory
    measured_ranges: set[str] = field(default_factory=set)  # roles ranged by this run's pass


def _int8_sources(
    job: _Job, reuse: dict[str, list[str]] | None = None
) -> tuple[dict[str, Path], dict[str, list[str]]]:
    """Role -> the FP32 graph to convert (:mod:`.int8_prepare`: the export's, or for INT8
    with smoothing a smoothed copy in ``tmp``; for MinMax calibration the ranges written to
    the range cache) and role -> the activations smoothed; ``reuse``: role -> activations,
    a plan's choice of smoothing."""
    files = job.manifest.graph_files(job.export_dir)
    opts = job.opts
    if opts.precision != "int8" or opts.calib is None:
        return {role: files[role] for role in job.roles}, {}
    inputs = Int8Inputs(
        opts.calib,
        opts.resolved_search(),
        opts.int8,
        opts.cache_dir or default_cache_dir(),
        opts.threads,
    )
    found = int8_sources(
        job.export_dir, job.manifest, job.roles, inputs, job.prepare, job.tmp, job.log,
        job.progress, reuse,
    )  # fmt: skip
    job.measured_ranges.update(found.measured_ranges)
    return found.files, found.smoothed


def _search_method(opts: QuantizeOptions) -> str:
    """The precision plan's ``method``: how the search chose the nodes it keeps."""
    if opts.precision == "fp16":
        return (
            "fp16: FP32 ranges of every tensor on the calibration pairs; nodes reading or "
            "writing a tensor beyond 65504 kept FP32, then the nodes adding the most relative "
            "error, until the gates pass on the search pairs"
        )
    smoothing = (
        f", activations smoothed with alpha {opts.int8.smooth}"
        if opts.int8.smooth is not None
        else ""
    )
    return (
        f"int8 ({opts.int8.method} calibration{smoothing}): each node quantized alone "
        "(the rest FP32), logits mean |error| vs FP32 on the search pairs; nodes left "
        f"unquantized in order of {opts.rank.replace('_', ' ')}, the shortest prefix "
        "passing the gates"
    )


def _search(job: _Job, sources: dict[str, Path]) -> PrecisionPlan:
    """Search the nodes to keep at higher precision (see :mod:`.auto`); ``sources``: role ->
    the FP32 graph converted (smoothed for INT8)."""
    from .auto import scratch, search_fp16, search_int8
    from .search_context import SearchContext

    assert job.opts.calib is not None
    search = job.opts.resolved_search()
    floor = job.opts.resolved_floor()
    ctx = SearchContext(
        {**job.manifest.graph_files(job.export_dir), **sources},
        job.roles,
        job.prepare,
        job.fp32,
        job.opts.calib,
        search,
        floor,
        job.manifest.mask_threshold,
        scratch(job.tmp),
        job.opts.threads,
        job.opts.eval_batch,
        max_rounds=job.opts.search_rounds,
        margin=job.opts.search_margin,
    )
    hashes = _source_hashes(job.export_dir, job.manifest, job.roles)
    shares: dict[str, tuple[float, float, int]] = {}
    start = time.perf_counter()
    if job.opts.precision == "fp16":
        kept, rounds = search_fp16(ctx, job.opts.fp32_ops, job.opts.fp32_nodes, job.log)
    else:
        full = {}
        for role in job.roles:
            out = ctx.work / f"{role}.int8.full.onnx"
            spec = job.manifest.graphs[role]
            _convert_one(
                role, sources[role], out, spec, job.opts, job.prepare, job.fp32, job.progress
            )
            full[role] = out
        kept, shares, rounds = search_int8(
            ctx, full, job.opts.cache_dir or default_cache_dir(), job.log, job.opts.rank
        )
    plan = PrecisionPlan(
        precision=job.opts.precision,
        method=_search_method(job.opts),
        calibration={
            "pairs": job.opts.calib.describe(),
            "sha256": pairs_hash(job.opts.calib),
            **(
                {"smooth_alpha": job.opts.int8.smooth}
                if job.opts.precision == "int8" and job.opts.int8.smooth is not None
                else {}
            ),
        },
        search={"pairs": search.describe(), "sha256": pairs_hash(search)},
        gates={
            "min_mask_iou": floor.min_mask_iou,
            "max_miou_drop_points": floor.max_miou_drop_points,
            "search_min_mask_iou": ctx.search_floor.min_mask_iou,
            "search_max_miou_drop_points": ctx.search_floor.max_miou_drop_points,
            **(
                {"max_logit_error": floor.max_logit_error}
                if floor.max_logit_error is not None
                else {}
            ),
        },
        roles={
            role: RolePlan(hashes[role], kept[role], *shares.get(role, (None, None, None)))
            for role in job.roles
        },
        rounds=rounds,
    )
    job.log(f"search took {time.perf_counter() - start:.1f} s; {_kept_summary(plan)}")
    return plan


def _convert_all(
    job: _Job,
    files: dict[str, Path],
    sources: dict[str, Path],
    extra: dict[str, tuple[str, ...]] | None = None,
) -> list[GraphOutcome]:
    """Write each role's graph at ``opts.precision`` into ``tmp`` (``files`` points at them);
    ``sources``: role -> the FP32 graph converted (smoothed for INT8); ``extra``: role ->
    nodes a precision plan keeps at higher precision."""
    outcomes = []
    for role in job.roles:
        spec = job.manifest.graphs[role]
        src = job.export_dir / spec.file
        out = job.tmp / f"{role}.{job.opts.precision}.onnx"
        start = time.perf_counter()
        nodes = (extra or {}).get(role, ())
        detail = _convert_one(
            role, sources[role], out, spec, job.opts, job.prepare, job.fp32, job.progress, nodes,
            role in job.measured_ranges,
        )  # fmt: skip
        outcomes.append(
            GraphOutcome(
                role,
                out.name,
                job.opts.precision,
                time.perf_counter() - start,
                out.stat().st_size,
                src.stat().st_size,
                detail,
            )
        )
        files[role] = out
        o = outcomes[-1]
        job.log(
            f"{role:<13} -> {o.file:<26} {o.seconds:6.1f} s "
            f"{o.size_bytes / 1e6:8.2f} MB (fp32 {o.fp32_size_bytes / 1e6:.2f} MB)"
        )
    return outcomes


class QuantizeFailed(ValidationError):
    """Below the accuracy floor; carries the full result for the table/JSON."""

    def __init__(self, result: QuantizeResult, message: str) -> None:
        super().__init__(message)
        self.result = result
