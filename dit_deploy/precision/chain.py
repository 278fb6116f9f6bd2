"""The precision pipeline's view of an export: graph chains over explicit files, and pairs
prepared exactly as the runtime prepares them (both from :mod:`dit_deploy.runtime`).

Calibration feeds each graph what the FP32 graphs upstream of it produce; verification runs
each precision's chain against the FP32 chain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..inputs import model_inputs
from ..preprocess import Letterbox
from ..runtime.backends import Backend
from ..runtime.graph_chain import GraphChain
from ..runtime.manifest import LAYOUT_ROLES, Manifest, open_tokenizer
from .samples import Pair


class PairInputs:
    """:class:`Pair` s -> model inputs through the runtime's ``model_inputs``."""

    def __init__(self, export_dir: Path, manifest: Manifest) -> None:
        self.manifest = manifest
        self.tokenizer = open_tokenizer(export_dir, manifest)

    def __call__(self, pairs: Sequence[Pair]) -> tuple[dict[str, np.ndarray], list[Letterbox]]:
        m = self.manifest
        images, texts = [p.image for p in pairs], [p.text for p in pairs]
        return model_inputs(images, texts, self.tokenizer, m.input_size, m.pixel_mean, m.pixel_std)


def chains(
    files: Mapping[str, Path],
    threads: int | None = None,
    opener: Callable[[str, Path], Backend] | None = None,
) -> dict[str, GraphChain]:
    """Chains over ``files`` (role -> graph), one per layout whose roles all have a file.

    ONNX Runtime on the CPU, unless ``opener`` ``(role, file) -> Backend`` says otherwise
    (e.g. OpenVINO running the FP32 graphs in BF16).
    """
    files = dict(files)
    out = {}
    for layout, roles in LAYOUT_ROLES.items():
        if not all(role in files for role in roles):
            continue
        if opener is None:
            out[layout] = GraphChain.from_files(layout, files, threads=threads)
        else:
            out[layout] = GraphChain(layout, lambda role, o=opener: o(role, files[role]))
    return out
