"""``Predictor``: an export directory -> masks, with no torch.

    p = Predictor("exports/refcoco_vit_b", backend="onnxruntime")  # precision="int8" too
    r = p.predict("horse.jpg", "pretty prancing gray horse with blue halter")
    rs = p.predict_batch([("a.jpg", "left man"), ("a.jpg", "right man"), ("b.png", "the cup")])

The manifest drives tokenization, letterboxing and the threshold. Thread-safe: the
predictor holds no per-call state, and ONNX Runtime sessions may be shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, InputError
from ..inputs import model_inputs
from ..postprocess import MaskResult, postprocess_batch
from ..preprocess import ImageSource
from ..tokenizer import WordPieceTokenizer
from .backends import Backend, check_execution, open_backend
from .engine_sidecar import engine_file
from .manifest import Manifest, read_manifest


class Predictor:
    """Runs an export directory (split or fused graphs) on one backend and device."""

    def __init__(
        self,
        export_dir: str | Path,
        backend: str = "onnxruntime",
        device: str = "cpu",
        layout: str | None = None,
        threads: int | None = None,
        max_batch: int = 8,
        precision: str = "fp32",
        cuda_graph: bool = False,
        backend_options: dict | None = None,
    ) -> None:
        self.export_dir = Path(export_dir)
        self.manifest: Manifest = read_manifest(self.export_dir)
        available = self.manifest.layouts
        if layout is None:
            layout = "fused" if "fused" in available else "split"
        if layout not in available:
            raise ArtifactError(
                f"{self.export_dir} has no {layout!r} graphs (has: {available or 'none'}); "
                f"re-export with --layout {layout} or pick one of {available}"
            )
        self.layout = layout
        roles = (
            ("dit_fused",) if layout == "fused" else ("text_encoder", "dit_encoder", "mask_decoder")
        )
        self.precision = precision
        self.backend_options = dict(backend_options or {})
        self.graphs: dict[str, Backend] = {
            role: self._open(role, backend, device, threads, cuda_graph) for role in roles
        }
        tok = self.manifest.tokenizer
        self.tokenizer = WordPieceTokenizer.from_vocab_file(
            self.export_dir / tok["vocab_file"],
            lowercase=tok["lowercase"],
            max_tokens=tok["max_tokens"],
        )
        self.max_batch = max_batch

    def _open(
        self, role: str, backend: str, device: str, threads: int | None, cuda_graph: bool
    ) -> Backend:
        """``<role>[.<precision>].onnx``, or for ``tensorrt`` its ``.engine`` (+ sidecar)."""
        spec = self.manifest.graph(role, self.precision)
        check_execution(backend, spec.execution)
        if backend != "tensorrt":
            return open_backend(
                backend,
                self.export_dir / spec.file,
                device,
                threads,
                execution=spec.execution,
                **self.backend_options,
            )
        engine = self.export_dir / engine_file(spec.file)
        if not engine.is_file():
            raise ArtifactError(
                f"{self.export_dir} has no TensorRT engine {engine.name}; build it on this "
                f"machine with: python export/to_trt.py {self.export_dir} "
                f"--precision {self.precision}"
            )
        return open_backend(
            backend,
            engine,
            "cuda" if device == "cpu" else device,
            threads,
            cuda_graph=cuda_graph,
            source_sha256=spec.sha256 or None,
        )

    def prepare(
        self, images: Sequence[ImageSource], texts: Sequence[str]
    ) -> tuple[dict[str, np.ndarray], list]:
        """Model inputs (``image``, ``input_ids``, ``attention_mask``) + letterbox records."""
        m = self.manifest
        return model_inputs(images, texts, self.tokenizer, m.input_size, m.pixel_mean, m.pixel_std)

    def low_res_logits(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """(B, 1, S/4, S/4) logits for prepared inputs."""
        if self.layout == "fused":
            return self.graphs["dit_fused"].run(feeds)["low_res_logits"]
        text = self.graphs["text_encoder"].run(
            {"input_ids": feeds["input_ids"], "attention_mask": feeds["attention_mask"]}
        )
        emb = self.graphs["dit_encoder"].run({"image": feeds["image"], **text})
        return self.graphs["mask_decoder"].run({**emb, **text})["low_res_logits"]

    def predict_batch(self, pairs: Sequence[tuple[ImageSource, str]]) -> list[MaskResult]:
        """Masks for (image, expression) pairs, run ``max_batch`` pairs at a time."""
        if isinstance(pairs, tuple) and len(pairs) == 2 and isinstance(pairs[1], str):
            raise InputError("predict_batch takes a list of (image, text) pairs; use predict()")
        results: list[MaskResult] = []
        for start in range(0, len(pairs), self.max_batch):
            chunk = pairs[start : start + self.max_batch]
            images, texts = zip(*chunk, strict=True)
            feeds, boxes = self.prepare(images, texts)
            results += postprocess_batch(
                self.low_res_logits(feeds), boxes, self.manifest.mask_threshold
            )
        return results

    def predict(self, image: ImageSource, text: str) -> MaskResult:
        """Mask (bool, original H x W) and score for one image and one expression."""
        return self.predict_batch([(image, text)])[0]
