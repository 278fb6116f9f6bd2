"""Run an export's graphs in ONNX Runtime (CPU): whole chains, or the feeds of one graph.

Used by calibration (each graph is calibrated on what the FP32 graphs upstream of it
produce) and by verification (each precision's chain against the FP32 chain).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from ..preprocess import Letterbox, preprocess_batch
from ..runtime.backends import Backend
from ..runtime.backends.onnxruntime import OnnxRuntimeBackend
from ..runtime.manifest import FUSED_GRAPHS, SPLIT_GRAPHS, Manifest
from ..tokenizer import WordPieceTokenizer
from .samples import Pair

LAYOUT_ROLES = {"split": SPLIT_GRAPHS, "fused": FUSED_GRAPHS}


class Preparer:
    """(image, text) pairs -> model inputs, exactly as the runtime prepares them."""

    def __init__(self, export_dir: Path, manifest: Manifest) -> None:
        self.manifest = manifest
        tok = manifest.tokenizer
        self.tokenizer = WordPieceTokenizer.from_vocab_file(
            Path(export_dir) / tok["vocab_file"],
            lowercase=tok["lowercase"],
            max_tokens=tok["max_tokens"],
        )

    def __call__(self, pairs: Sequence[Pair]) -> tuple[dict[str, np.ndarray], list[Letterbox]]:
        m = self.manifest
        images = [p.image for p in pairs]
        batch, boxes = preprocess_batch(images, m.input_size, m.pixel_mean, m.pixel_std)
        ids, mask = self.tokenizer.encode_batch([p.text for p in pairs])
        return {"image": batch, "input_ids": ids, "attention_mask": mask}, boxes


class GraphSet:
    """Backends (ONNX Runtime CPU unless ``opener`` says otherwise: ``(role, file) ->
    Backend``) over one precision's graphs (role -> file), opened lazily."""

    def __init__(
        self,
        files: Mapping[str, Path],
        threads: int | None = None,
        opener: Callable[[str, Path], Backend] | None = None,
    ) -> None:
        self.files = dict(files)
        self.threads = threads
        self.opener = opener or (lambda _role, f: OnnxRuntimeBackend(f, threads=self.threads))
        self._sessions: dict[str, Backend] = {}

    def session(self, role: str) -> Backend:
        if role not in self._sessions:
            if role not in self.files:
                raise ArtifactError(f"no graph for {role!r} (have {sorted(self.files)})")
            self._sessions[role] = self.opener(role, self.files[role])
        return self._sessions[role]

    def run(self, role: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = {spec.name for spec in self.session(role).inputs}
        return self.session(role).run({k: v for k, v in feeds.items() if k in names})

    def logits(self, layout: str, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """(B, 1, h, w) low-res logits of the whole ``layout`` chain."""
        if layout == "fused":
            return self.run("dit_fused", feeds)["low_res_logits"]
        text = self.run("text_encoder", feeds)
        emb = self.run("dit_encoder", {**feeds, **text})
        return self.run("mask_decoder", {**emb, **text})["low_res_logits"]

    def role_inputs(self, role: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The inputs of graph ``role`` for prepared ``feeds``, computed by these graphs."""
        if role in ("text_encoder", "dit_fused"):
            out = dict(feeds)
        elif role == "dit_encoder":
            out = {**feeds, **self.run("text_encoder", feeds)}
        elif role == "mask_decoder":
            text = self.run("text_encoder", feeds)
            out = {**text, **self.run("dit_encoder", {**feeds, **text})}
        else:
            raise ArtifactError(f"unknown graph role {role!r}")
        names = {spec.name for spec in self.session(role).inputs}
        return {k: v for k, v in out.items() if k in names}


def fp32_files(export_dir: Path, manifest: Manifest) -> dict[str, Path]:
    return {role: Path(export_dir) / g.file for role, g in manifest.graphs.items()}
