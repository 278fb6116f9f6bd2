"""(image, expression, ground-truth mask) pairs for calibration and verification, streamed.

A :class:`PairSource` names where the pairs come from (a dataset split read through
:func:`dit_deploy.data.open_dataset`, or scenes generated on the fly by the synthetic
generator when no dataset is given) and how many. Iterating it decodes one pair at a time,
so calibrating on 512 pairs holds one image in memory, not 512.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError

GENERATED_SCENE_SIZE = 128


@dataclass(frozen=True)
class Pair:
    """One referring pair: uint8 (H, W, 3) RGB image, expression, bool (H, W) mask or None."""

    image: np.ndarray
    text: str
    mask: np.ndarray | None


@dataclass(frozen=True)
class PairSource:
    """``size`` pairs of ``split`` from the dataset at ``data`` (None: generated scenes).

    Pairs are picked by a seeded permutation of the split, so a source always yields the
    same pairs, and two splits never share one.
    """

    data: Path | None
    split: str
    size: int
    seed: int = 0

    def describe(self) -> str:
        where = str(self.data) if self.data else "generated synthetic scenes"
        return f"{where} [{self.split}] x{self.size}"

    def key(self) -> dict[str, object]:
        """What identifies these pairs (for calibration caches)."""
        data = str(Path(self.data).resolve()) if self.data else None
        return {"data": data, "split": self.split, "size": self.size, "seed": self.seed}

    def __len__(self) -> int:
        if self.data is None:
            return self.size
        return min(self.size, len(self._dataset()))

    def _dataset(self):
        from ..data import open_dataset

        return open_dataset(self.data, self.split)

    def __iter__(self) -> Iterator[Pair]:
        if self.size <= 0:
            raise DatasetError(f"asked for {self.size} pairs from {self.describe()}; ask for >= 1")
        if self.data is None:
            yield from _generated(self.split, self.size, self.seed)
            return
        dataset = self._dataset()
        if len(dataset) == 0:
            raise DatasetError(f"{self.data} has no samples in split {self.split!r}")
        order = np.random.default_rng(self.seed).permutation(len(dataset))[: self.size]
        for index in order:
            sample = dataset[int(index)]
            yield Pair(sample.load_image(), sample.sentence, sample.mask())


def _generated(split: str, size: int, seed: int) -> Iterator[Pair]:
    from ..data.synthetic import SPLIT_CODES, make_scene

    if split not in SPLIT_CODES:
        raise DatasetError(
            f"generated scenes have splits {sorted(SPLIT_CODES)}, not {split!r}; "
            "pass --calib-data/--eval-data to use a dataset"
        )
    made, index = 0, 0
    while made < size:
        scene = make_scene(seed=seed, split=split, index=index, size=GENERATED_SCENE_SIZE)
        for target, _expr, text in scene.expressions:
            if made == size:
                return
            yield Pair(scene.image, text, scene.masks[target])
            made += 1
        index += 1
