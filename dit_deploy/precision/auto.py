"""Automatic mixed precision: find which nodes to keep at higher precision, gated on accuracy.

FP16 (:func:`search_fp16`): the FP32 graphs run on calibration pairs with every tensor
observed (:mod:`.tensor_stats`); a node whose output (or input) leaves the FP16 range is
kept FP32 with its neighbours on that tensor, so an island spans the overflowing value.
While the gates fail on the search pairs, the FP16 and FP32 graphs are compared tensor by
tensor and the nodes that add the most relative error (their output's error minus their
inputs') are kept FP32 too, a few per round. Gaps of one node between kept nodes are
filled, so there are few islands (few Casts).

INT8 (:func:`search_int8`): from the fully quantized graphs, each quantized node is kept
quantized alone (every other Q/DQ pair removed) and the logits error against FP32 measured
on the first search pairs (:mod:`.sensitivity`, cached; the fused graph's nodes take their
split twins' errors, :mod:`.layout_alias`); nodes are then kept unquantized in order of
that error per FLOP, the shortest prefix that passes the gates is found (doubling, then
bisection), so the rest stays INT8; the largest nodes of that prefix are then tried back
in INT8 one at a time; the fused layout first tries the split layout's plan. The INT8
share of the MatMul/Gemm/Conv FLOPs is measured on the FP32 graph's real shapes.

The gates are those of the final verification (:class:`.verify.Floor`) with a margin
(``SearchContext.margin``), evaluated here on search pairs that are not the verification
pairs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..runtime.manifest import LAYOUT_ROLES
from .fp16 import convert_fp16
from .layout_alias import FUSED, FUSED_PREFIX
from .plan import KeptNode
from .search_context import Log, SearchContext
from .sensitivity import quantized_nodes, sensitivities, split_twins, without_qdq
from .tensor_stats import FP16_MAX, observe, relative_errors
from .verify import LayoutReport


def _round(reports: Sequence[LayoutReport], kept: int, **extra: object) -> dict[str, object]:
    return {
        "kept": kept,
        "ok": all(r.ok for r in reports),
        "layouts": {
            r.layout: {
                "mask_iou": round(r.mask_iou, 6),
                "miou_change_points": round(r.miou_change * 100, 4),
                "logits_mean_abs": float(r.logits_mean_abs),
            }
            for r in reports
        },
        **extra,
    }


# ---------------------------------------------------------------------------- FP16
def overflow_nodes(model, stats) -> dict[str, str]:
    """Node name -> why it must stay FP32: it reads or writes a tensor (or a constant) whose
    magnitude exceeds the FP16 range, or that is not finite already in FP32."""
    from onnx import numpy_helper

    hot = {name for name, s in stats.items() if not s.max_abs <= FP16_MAX}
    for init in model.graph.initializer:
        if init.data_type == 1 and np.abs(numpy_helper.to_array(init)).max(initial=0) > FP16_MAX:
            hot.add(init.name)
    reasons: dict[str, str] = {}
    for node in model.graph.node:
        for name in [*node.output, *node.input]:
            if name in hot:
                peak = stats[name].max_abs if name in stats else float("nan")
                where = "writes" if name in node.output else "reads"
                reasons.setdefault(
                    node.name, f"{where} {name} (|x| up to {peak:.4g} > FP16 max {FP16_MAX:g})"
                )
    return reasons


def fp16_drift(errors: Mapping[str, float], model) -> dict[str, float]:
    """Node name -> the relative error it adds in FP16: its output's relative error against
    the FP32 graph (``errors``, from :func:`.tensor_stats.relative_errors`) minus the
    largest of its inputs'."""
    gains: dict[str, float] = {}
    for node in model.graph.node:
        out = max((errors.get(o, 0.0) for o in node.output if o), default=0.0)
        ins = max((errors.get(i, 0.0) for i in node.input if i), default=0.0)
        gains[node.name] = out - ins if np.isfinite(out) else float("inf")
    return gains


def fill_gaps(model, kept: set[str], protected: set[str] | None = None) -> set[str]:
    """``kept`` plus every node whose producers and consumers are all kept (one-node gaps
    between islands would each cost two Casts for nothing)."""
    producer = {o: n.name for n in model.graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    filled = set(kept)
    for node in model.graph.node:
        if node.name in filled or (protected and node.name in protected):
            continue
        ups = [producer[i] for i in node.input if i in producer]
        downs = [c for o in node.output for c in consumers.get(o, [])]
        if ups and downs and all(u in kept for u in ups) and all(d in kept for d in downs):
            filled.add(node.name)
    return filled


def search_fp16(
    ctx: SearchContext,
    fp32_ops: Sequence[str],
    fp32_nodes: Sequence[str],
    log: Log,
    step: int = 4,
    drift_pairs: int = 4,
) -> tuple[dict[str, list[KeptNode]], list[dict[str, object]]]:
    """Role -> the nodes to keep FP32 beyond ``fp32_ops``/``fp32_nodes``, and the rounds."""
    import onnx

    models = {role: onnx.load(str(ctx.sources[role])) for role in ctx.roles}
    kept: dict[str, dict[str, KeptNode]] = {}
    for role, model in models.items():
        feeds = ctx.role_feeds(role, ctx.calib, len(ctx.calib))
        stats = observe(model, feeds, threads=ctx.threads)
        reasons = overflow_nodes(model, stats)
        types = {n.name: n.op_type for n in model.graph.node}
        kept[role] = {
            name: KeptNode(name, types[name], f"FP16 range: {why}") for name, why in reasons.items()
        }
        if reasons:
            log(f"{role}: {len(reasons)} node(s) outside the FP16 range: {sorted(reasons)}")
    rounds: list[dict[str, object]] = []
    layouts = ctx.layouts()
    drift_feeds: dict[str, list[dict]] = {}
    for index in range(ctx.max_rounds + 1):
        files = dict(ctx.sources)
        converted = {}
        for role, model in models.items():
            nodes = [*fp32_nodes, *kept[role]]
            converted[role] = convert_fp16(model, fp32_ops, nodes)
            files[role] = ctx.work / f"{role}.fp16.search.onnx"
            onnx.save(converted[role], str(files[role]))
        reports = ctx.gates(files, layouts)
        total = sum(len(k) for k in kept.values())
        rounds.append(_round(reports, total))
        log(
            f"fp16 round {index}: {total} node(s) kept FP32, "
            + ", ".join(f"{r.layout} mask IoU {r.mask_iou:.4f}" for r in reports)
            + (" ok" if all(r.ok for r in reports) else "")
        )
        if all(r.ok for r in reports) or index == ctx.max_rounds:
            break
        candidates = []
        for role, model in models.items():
            if role not in drift_feeds:
                drift_feeds[role] = ctx.role_feeds(role, ctx.search, drift_pairs)
            names = [o for n in model.graph.node for o in n.output]
            errors = relative_errors(
                model, converted[role], drift_feeds[role], names, threads=ctx.threads
            )
            for name, gain in fp16_drift(errors, model).items():
                if name not in kept[role] and gain > 0:
                    candidates.append((gain, role, name))
        if not candidates:
            break
        candidates.sort(key=lambda c: -c[0])
        for gain, role, name in candidates[:step]:
            op = next(n.op_type for n in models[role].graph.node if n.name == name)
            kept[role][name] = KeptNode(name, op, "FP16 error: adds the most relative error", gain)
        for role, model in models.items():
            filled = fill_gaps(model, set(kept[role]))
            for name in sorted(filled - set(kept[role])):
                op = next(n.op_type for n in model.graph.node if n.name == name)
                kept[role][name] = KeptNode(name, op, "between two FP32 islands (fewer Casts)")
    return {role: list(k.values()) for role, k in kept.items()}, rounds


# ---------------------------------------------------------------------------- INT8
def search_int8(
    ctx: SearchContext,
    quantized: Mapping[str, Path],
    cache_dir: Path | None,
    log: Log,
    rank: str = "error_per_flop",
    refine: int = 12,
) -> tuple[dict[str, list[KeptNode]], dict[str, tuple[float, float, int]], list[dict[str, object]]]:
    """Role -> nodes to leave unquantized, role -> (INT8 FLOPs, total FLOPs, quantizable
    nodes), the rounds.

    ``quantized``: role -> its fully quantized graph (made with the calibration ranges).
    """
    import onnx

    qmodels = {role: onnx.load(str(quantized[role])) for role in ctx.roles}
    fp32_models = {role: onnx.load(str(ctx.sources[role])) for role in ctx.roles}
    base = {**ctx.sources, **{r: Path(quantized[r]) for r in ctx.roles}}
    flops, ranked = sensitivities(ctx, quantized, qmodels, fp32_models, base, cache_dir, log)
    kept: dict[str, list[KeptNode]] = {role: [] for role in ctx.roles}
    rounds: list[dict[str, object]] = []
    for layout in ctx.layouts():
        roles = [r for r in LAYOUT_ROLES[layout] if r in ctx.roles]
        order = rank_nodes({r: ranked[r][1] for r in roles}, flops, rank)

        def attempt(drop: Sequence[tuple[float, str, str]], step: str, layout=layout) -> bool:
            files = dict(base)
            for role in LAYOUT_ROLES[layout]:
                names = {n for _, r, n in drop if r == role}
                if names:
                    files[role] = ctx.work / f"{role}.int8.search.onnx"
                    onnx.save(without_qdq(qmodels[role], fp32_models[role], names), files[role])
            (report,) = ctx.gates(files, [layout])
            rounds.append(_round([report], len(drop), step=step))
            log(
                f"int8 {layout} ({step}): {len(drop)} node(s) unquantized, mask IoU "
                f"{report.mask_iou:.4f}, mIoU {report.miou_change * 100:+.2f} points"
                + (" ok" if report.ok else "")
            )
            return report.ok

        twins = split_twins(kept, qmodels) if layout == "fused" else None
        if twins is not None:  # the split layout's plan, if it passes here too
            split = [(k.error, FUSED, twins[(r, k.node)]) for r in FUSED_PREFIX for k in kept[r]]
            if attempt(split, "the split layout's nodes"):
                why = "its twin in the split graphs is kept (the split layout's search)"
                kept[FUSED] = [
                    _kept(fp32_models[FUSED], n, e, flops[FUSED], why) for e, _, n in split
                ]
                continue
        good = _shortest_prefix(lambda k, o=order: attempt(o[:k], "prefix"), len(order))
        chosen = order[:good]
        # the prefix ends where one node tipped the gates; the largest nodes in it may each
        # pass quantized on their own: try them back, largest FLOPs first
        biggest = sorted(chosen, key=lambda item: -flops[item[1]].get(item[2], 0.0))
        for item in biggest[:refine] if good < len(order) else []:
            trial = [c for c in chosen if c != item]
            if attempt(trial, f"requantize {item[2]}"):
                chosen = trial
        why = f"INT8 sensitivity: among the largest ({rank.replace('_', ' ')})"
        for error, role, name in chosen:
            kept[role].append(_kept(fp32_models[role], name, error, flops[role], why))
    return kept, _int8_shares(ctx, qmodels, flops, kept), rounds


def _kept(fp32_model, name: str, error: float, flops: Mapping[str, float], why: str) -> KeptNode:
    op = next(n.op_type for n in fp32_model.graph.node if n.name == name)
    return KeptNode(name, op, why, error, flops.get(name))


def _int8_shares(
    ctx: SearchContext,
    qmodels: Mapping[str, object],
    flops: Mapping[str, Mapping[str, float]],
    kept: Mapping[str, list[KeptNode]],
) -> dict[str, tuple[float, float, int]]:
    """Role -> (INT8 FLOPs, total FLOPs, quantizable nodes) once ``kept`` stay unquantized."""
    shares = {}
    for role in ctx.roles:
        quantizable = quantized_nodes(qmodels[role])
        int8 = set(quantizable) - {k.node for k in kept[role]}
        total = sum(flops[role].values())
        shares[role] = (
            sum(f for n, f in flops[role].items() if n in int8),
            total,
            len(quantizable),
        )
    return shares


RANKINGS = ("error_per_flop", "error")


def rank_nodes(
    errors: Mapping[str, Mapping[str, float]],
    flops: Mapping[str, Mapping[str, float]],
    rank: str = "error_per_flop",
) -> list[tuple[float, str, str]]:
    """(error, role, node), in the order nodes are taken out of INT8.

    ``error``: the largest error quantized alone first. ``error_per_flop``: the most error
    per FLOP that stays INT8 first (a greedy knapsack: the gates are met giving up the
    fewest INT8 FLOPs; measured to keep more INT8 compute, docs/benchmarks.md).
    """
    if rank not in RANKINGS:
        raise ValueError(f"rank {rank!r}: one of {RANKINGS}")
    items = [(e, r, n) for r, table in errors.items() for n, e in table.items()]

    def key(item: tuple[float, str, str]) -> tuple[float, str, str]:
        error, role, node = item
        cost = max(flops.get(role, {}).get(node, 0.0), 1.0) if rank == "error_per_flop" else 1.0
        return (-error / cost, role, node)

    return sorted(items, key=key)


def _shortest_prefix(passes: Callable[[int], bool], n: int) -> int:
    """The smallest k in [0, n] with ``passes(k)``, assuming more is never worse (doubling,
    then bisection); n if none passes."""
    if n == 0 or passes(0):
        return 0
    low, high = 0, 1
    while high < n and not passes(high):
        low, high = high, min(2 * high, n)
    while high - low > 1:
        mid = (low + high) // 2
        if passes(mid):
            high = mid
        else:
            low = mid
    return high


def scratch(directory: Path) -> Path:
    """A scratch directory for search graphs inside ``directory``."""
    return Path(tempfile.mkdtemp(prefix="search-", dir=directory))
