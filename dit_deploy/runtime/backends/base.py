"""The backend interface: input/output metadata and ``run(feeds) -> outputs``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np

from ...errors import InputError
from ..manifest import TensorSpec


class Backend(ABC):
    """One compiled graph. ``run`` checks feeds once, then calls ``_run``.

    Implementations must be safe to call from several threads at once.
    """

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def close(self) -> None:  # noqa: B027 - optional hook: most backends free on collection
        """Release what the backend holds (sessions, engines, device memory)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feeds by input name -> outputs by output name (numpy arrays)."""
        self.check_feeds(feeds)
        return self._run(feeds)

    @abstractmethod
    def _run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        names = {spec.name for spec in self.inputs}
        if set(feeds) != names:
            raise InputError(
                f"{type(self).__name__}: inputs {sorted(feeds)} given, "
                f"graph expects {sorted(names)}"
            )
        batch = None
        for spec in self.inputs:
            array = feeds[spec.name]
            if not isinstance(array, np.ndarray):
                raise InputError(
                    f"input {spec.name!r} must be a numpy array, got {type(array).__name__}"
                )
            if array.dtype != np.dtype(spec.dtype):
                raise InputError(
                    f"input {spec.name!r} has dtype {array.dtype}, expected {spec.dtype}"
                )
            if array.ndim != len(spec.shape):
                raise InputError(
                    f"input {spec.name!r} has shape {array.shape}, expected {tuple(spec.shape)}"
                )
            for got, want in zip(array.shape, spec.shape, strict=True):
                if isinstance(want, int) and got != want:
                    raise InputError(
                        f"input {spec.name!r} has shape {array.shape}, expected {tuple(spec.shape)}"
                    )
            if batch is not None and array.shape[0] != batch:
                raise InputError(f"inputs disagree on the batch size ({batch} vs {array.shape[0]})")
            batch = array.shape[0]
