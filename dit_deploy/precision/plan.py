"""``precision_plan.json``: which nodes an automatic precision search kept at higher precision,
why (their measured error), how they were found, and on which pairs.

One file per export, beside the graphs, one entry per precision; ``manifest.json`` records
its name and sha256 (``precision_plan``), so a plan is checked before it is reused. A plan
names the FP32 graph each role was searched on (its sha256): reusing it on another graph is
refused, because node names would no longer mean the same nodes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..errors import ArtifactError, ConfigError
from ..schema import NUMBER, MapOf, check
from .samples import PairSource

PLAN_FILE = "precision_plan.json"
PLAN_VERSION = 1

_KEPT = {"node": str, "op_type": str, "reason": str, "error?": NUMBER, "flops?": NUMBER}
_ROLE = {
    "source_graph_sha256": str,
    "kept": [_KEPT],
    "int8_flops?": NUMBER,
    "total_flops?": NUMBER,
    "quantizable?": int,
    "smoothed?": [str],
}
_ENTRY = {
    "precision": str,
    "method": str,
    "calibration": {"pairs": str, "sha256": str, "smooth_alpha?": NUMBER},
    "search": {"pairs": str, "sha256": str},
    "gates": {
        "min_mask_iou": NUMBER,
        "max_miou_drop_points": NUMBER,
        "search_min_mask_iou?": NUMBER,
        "search_max_miou_drop_points?": NUMBER,
        "max_logit_error?": NUMBER,
    },
    "roles": MapOf(_ROLE),
    "rounds": [dict],
    "int8_flop_share?": NUMBER,
}
PLAN_SCHEMA = {"plan_version": int, "precisions": MapOf(_ENTRY)}


def pairs_hash(source: PairSource) -> str:
    """sha256 of what identifies a pair set (data root, split, size, seed)."""
    return hashlib.sha256(json.dumps(source.key(), sort_keys=True).encode()).hexdigest()


@dataclass
class KeptNode:
    """A node left at higher precision, and its measured ``error`` at the lower one.

    INT8: logits mean |error| against FP32 on the search pairs with only this node quantized.
    FP16: the relative error (sum |d| / sum |x|) the node adds over its inputs' in FP16.
    None for nodes kept because a tensor leaves the FP16 range or to close a gap.
    ``flops``: INT8, its multiply-add FLOPs (x2) for one input (what INT8 gives up).
    """

    node: str
    op_type: str
    reason: str
    error: float | None = None
    flops: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class RolePlan:
    source_graph_sha256: str
    kept: list[KeptNode] = field(default_factory=list)
    int8_flops: float | None = None
    total_flops: float | None = None
    quantizable: int | None = None  # INT8: how many nodes the full quantization quantized
    smoothed: list[str] = field(default_factory=list)  # INT8: activations migrated (.smooth)

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(k.node for k in self.kept)

    @property
    def all_kept(self) -> bool:
        """INT8 leaves no node quantized: the role stays FP32 (its FP32 graph is used)."""
        return self.quantizable is not None and len(self.kept) >= self.quantizable

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "source_graph_sha256": self.source_graph_sha256,
            "kept": [k.to_dict() for k in self.kept],
        }
        if self.int8_flops is not None:
            data["int8_flops"] = self.int8_flops
            data["total_flops"] = self.total_flops
        if self.quantizable is not None:
            data["quantizable"] = self.quantizable
        if self.smoothed:
            data["smoothed"] = list(self.smoothed)
        return data


@dataclass
class PrecisionPlan:
    """One precision's plan (see the module docstring)."""

    precision: str
    method: str
    calibration: dict[str, Any]  # pairs, sha256, and the INT8 smoothing strength if any
    search: dict[str, str]
    gates: dict[str, float]
    roles: dict[str, RolePlan]
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def int8_flop_share(self) -> float | None:
        total = sum(r.total_flops or 0.0 for r in self.roles.values())
        if self.precision != "int8" or not total:
            return None
        return sum(r.int8_flops or 0.0 for r in self.roles.values()) / total

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "precision": self.precision,
            "method": self.method,
            "calibration": self.calibration,
            "search": self.search,
            "gates": self.gates,
            "roles": {role: plan.to_dict() for role, plan in self.roles.items()},
            "rounds": self.rounds,
        }
        if self.int8_flop_share is not None:
            data["int8_flop_share"] = self.int8_flop_share
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrecisionPlan:
        roles = {
            role: RolePlan(
                r["source_graph_sha256"],
                [KeptNode(**k) for k in r["kept"]],
                r.get("int8_flops"),
                r.get("total_flops"),
                r.get("quantizable"),
                list(r.get("smoothed", [])),
            )
            for role, r in data["roles"].items()
        }
        return cls(
            data["precision"],
            data["method"],
            dict(data["calibration"]),
            dict(data["search"]),
            dict(data["gates"]),
            roles,
            list(data["rounds"]),
        )

    def check_sources(self, sources: dict[str, str], where: str) -> None:
        """Refuse a plan searched on other FP32 graphs (``sources``: role -> sha256)."""
        for role, sha in sources.items():
            plan = self.roles.get(role)
            if plan is None:
                raise ConfigError(
                    f"{where} has no {self.precision} entry for graph {role}; re-run the search "
                    "with --auto instead of --plan"
                )
            if plan.source_graph_sha256 != sha:
                raise ConfigError(
                    f"{where} was searched on another {role} graph (sha256 "
                    f"{plan.source_graph_sha256[:12]}..., this export's is {sha[:12]}...); "
                    "re-run the search with --auto"
                )

    def check_smoothing(self, alpha: float | None) -> None:
        """Refuse to reuse an INT8 plan with another smoothing than it was searched with (the
        sensitivities, so the kept nodes, depend on it)."""
        searched = self.calibration.get("smooth_alpha")
        if self.precision == "int8" and searched != alpha:
            wanted = "--no-smooth" if searched is None else f"--smooth {searched}"
            raise ConfigError(
                f"this plan was searched with {wanted}, not "
                f"{'--no-smooth' if alpha is None else f'--smooth {alpha}'}; pass {wanted} or "
                "re-run the search with --auto"
            )


def read_plans(path: Path) -> dict[str, PrecisionPlan]:
    """Every precision's plan in ``path`` (typed error naming the file if it is not one)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--plan {path}: no such file; write one with --auto")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(
            f"{path} is not valid JSON ({exc}); re-run the search with --auto"
        ) from exc
    check(data, PLAN_SCHEMA, str(path))
    if data["plan_version"] != PLAN_VERSION:
        raise ArtifactError(
            f"{path} is plan version {data['plan_version']}, this dit-deploy reads "
            f"{PLAN_VERSION}; re-run the search with --auto"
        )
    return {p: PrecisionPlan.from_dict(e) for p, e in data["precisions"].items()}


def read_plan(path: Path, precision: str) -> PrecisionPlan:
    """The ``precision`` entry of the plan file ``path``."""
    plans = read_plans(path)
    if precision not in plans:
        raise ConfigError(
            f"{path} has no {precision} plan (has: {', '.join(sorted(plans)) or 'none'}); "
            f"run with --precision {precision} --auto to make one"
        )
    return plans[precision]


def write_plans(path: Path, plans: dict[str, PrecisionPlan]) -> Path:
    """Write every precision's plan to ``path`` atomically."""
    data = {
        "plan_version": PLAN_VERSION,
        "precisions": {p: plan.to_dict() for p, plan in sorted(plans.items())},
    }
    check(data, PLAN_SCHEMA, str(path))
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")
