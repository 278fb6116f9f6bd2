"""What the precision searches (:mod:`.auto`, :mod:`.sensitivity`) share: the FP32 graphs,
the search pairs and the gates."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..runtime.graph_chain import GraphChain, layout_of
from ..runtime.manifest import LAYOUT_ROLES
from .chain import PairInputs, chains
from .samples import PairSource
from .verify import Floor, LayoutReport, compare_layout

Log = Callable[[str], None]


@dataclass
class SearchContext:
    """What both searches need: the FP32 graphs, the pairs and the gates."""

    sources: dict[str, Path]  # role -> FP32 graph
    roles: Sequence[str]  # the roles being converted
    prepare: PairInputs
    fp32: dict[str, GraphChain]
    calib: PairSource
    search: PairSource
    floor: Floor
    threshold: float
    work: Path  # a scratch directory
    threads: int | None = None
    eval_batch: int = 4
    max_rounds: int = 12
    # the search gates on a quarter less loss than allowed: the verdict comes from other
    # pairs, and on the bundled model a plan found at exactly the floor missed it there by
    # 0.0004 mask IoU (docs/benchmarks.md, "Automatic mixed precision")
    margin: float = 0.25

    @property
    def search_floor(self) -> Floor:
        keep = 1.0 - self.margin
        limit = self.floor.max_logit_error
        return Floor(
            1.0 - (1.0 - self.floor.min_mask_iou) * keep,
            self.floor.max_miou_drop * keep,
            None if limit is None else limit * keep,
        )

    def gates(self, files: Mapping[str, Path], layouts: Sequence[str]) -> list[LayoutReport]:
        """The gates on the search pairs for ``files`` (role -> graph), per layout."""
        candidate = chains(files, self.threads)
        try:
            return [
                compare_layout(
                    layout,
                    self.fp32[layout],
                    candidate[layout],
                    self.prepare,
                    self.search,
                    self.threshold,
                    self.eval_batch,
                ).check(self.search_floor)
                for layout in layouts
            ]
        finally:
            for chain in candidate.values():
                chain.close()

    def role_feeds(self, role: str, source: PairSource, limit: int) -> list[dict]:
        """The FP32 inputs of ``role`` for the first ``limit`` pairs of ``source``, one each."""
        chain = self.fp32[layout_of(role)]
        feeds = []
        for index, pair in enumerate(source):
            if index == limit:
                break
            prepared, _ = self.prepare([pair])
            feeds.append(chain.role_inputs(role, prepared))
        return feeds

    def layouts(self) -> list[str]:
        return [
            layout
            for layout, roles in LAYOUT_ROLES.items()
            if layout in self.fp32 and any(r in self.roles for r in roles)
        ]
