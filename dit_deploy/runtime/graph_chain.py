"""``GraphChain``: the graphs of one layout, run in order (torch-free).

The one place that knows how an export's graphs connect. Every graph takes its inputs by
name from the values computed so far (the prepared feeds, then every upstream output), so
a layout is just its ordered roles in :data:`~dit_deploy.runtime.manifest.LAYOUT_ROLES`:

    split: text_encoder -> dit_encoder -> mask_decoder      fused: dit_fused

Used by the :class:`~dit_deploy.runtime.Predictor`, the precision pipeline (calibration
inputs and verification), the benchmark's per-stage split and the export validator.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from .backends import Backend, open_backend
from .manifest import LAYOUT_ROLES, STAGE_LABELS

LOGITS = "low_res_logits"

Opener = Callable[[str], Backend]


def layout_of(role: str) -> str:
    """The layout a graph role belongs to."""
    for layout, roles in LAYOUT_ROLES.items():
        if role in roles:
            return layout
    raise ArtifactError(f"unknown graph role {role!r}; known: {sorted(STAGE_LABELS)}")


class GraphChain:
    """The backends of one layout's roles, opened on first use, run in order.

    Args:
        layout: a key of ``LAYOUT_ROLES`` (``split`` or ``fused``).
        open_role: role -> an opened :class:`Backend` (called once per role).
    """

    def __init__(self, layout: str, open_role: Opener) -> None:
        if layout not in LAYOUT_ROLES:
            raise ArtifactError(f"unknown layout {layout!r}; known: {sorted(LAYOUT_ROLES)}")
        self.layout = layout
        self.roles: tuple[str, ...] = LAYOUT_ROLES[layout]
        self._open_role = open_role
        self._backends: dict[str, Backend] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_files(
        cls,
        layout: str,
        files: Mapping[str, Path],
        backend: str = "onnxruntime",
        device: str = "cpu",
        threads: int | None = None,
    ) -> GraphChain:
        """A chain over explicit graph files (role -> path), e.g. candidate precision graphs."""
        files = dict(files)

        def open_role(role: str) -> Backend:
            if role not in files:
                raise ArtifactError(f"no graph file for {role!r} (have {sorted(files)})")
            return open_backend(backend, Path(files[role]), device, threads)

        return cls(layout, open_role)

    def backend(self, role: str) -> Backend:
        """The opened backend of ``role`` (opens it on first use; thread-safe)."""
        if role not in self.roles:
            raise ArtifactError(f"graph role {role!r} is not in the {self.layout} layout")
        backend = self._backends.get(role)
        if backend is None:
            with self._lock:
                backend = self._backends.get(role)
                if backend is None:
                    backend = self._backends[role] = self._open_role(role)
        return backend

    @property
    def backends(self) -> dict[str, Backend]:
        """Every role's backend, in chain order (opens them all)."""
        return {role: self.backend(role) for role in self.roles}

    def open_all(self) -> GraphChain:
        """Open every graph now (a missing or broken graph fails here, not on first use)."""
        self.backends  # noqa: B018 - opening is the point
        return self

    def role_feeds(self, role: str, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The inputs of ``role`` picked by name from ``values`` (typed error if one lacks)."""
        names = [spec.name for spec in self.backend(role).inputs]
        missing = [n for n in names if n not in values]
        if missing:
            raise ArtifactError(
                f"graph {role!r} needs inputs {missing} that no upstream graph of the "
                f"{self.layout} layout produces; is the export's manifest right?"
            )
        return {n: values[n] for n in names}

    def run_role(self, role: str, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one graph on the inputs it needs from ``values``."""
        return self.backend(role).run(self.role_feeds(role, values))

    def forward(
        self, feeds: Mapping[str, np.ndarray], upto: str | None = None
    ) -> dict[str, np.ndarray]:
        """Every value of the chain: ``feeds`` plus each graph's outputs, in order.

        With ``upto``, stops before that role (its inputs are then all computed).
        """
        values = dict(feeds)
        for role in self.roles:
            if role == upto:
                return values
            values.update(self.run_role(role, values))
        if upto is not None:
            raise ArtifactError(f"graph role {upto!r} is not in the {self.layout} layout")
        return values

    def logits(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """(B, 1, S/4, S/4) low-res logits for prepared feeds."""
        return self.forward(feeds)[LOGITS]

    def role_inputs(self, role: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The inputs of ``role`` for prepared ``feeds``, computed by the graphs upstream."""
        return self.role_feeds(role, self.forward(feeds, upto=role))

    def stages(self, feeds: Mapping[str, np.ndarray]) -> dict[str, Callable[[], object]]:
        """Stage label -> a call running that graph alone on its real inputs (for timing)."""
        values = self.forward(feeds)
        return {
            STAGE_LABELS[role]: partial(self.backend(role).run, self.role_feeds(role, values))
            for role in self.roles
        }

    def close(self) -> None:
        """Release every opened backend."""
        with self._lock:
            backends, self._backends = list(self._backends.values()), {}
        for backend in backends:
            backend.close()

    def __enter__(self) -> GraphChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
