"""``Predictor``: an export directory -> masks, with no torch.

    with Predictor("exports/refcoco_vit_b", backend="onnxruntime", precision="int8") as p:
        r = p.predict("horse.jpg", "pretty prancing gray horse with blue halter")
        rs = p.predict_batch([("a.jpg", "left man"), ("a.jpg", "right man"), ("b.png", "cup")])

The manifest drives tokenization, letterboxing and the threshold. Every file the predictor
uses is checked against the sha256 recorded in the manifest before the first run, and a
CPU precision against the CPU it was verified on (runtime/verified_on.py: the same numerics
run, others are re-verified on the export's stored pairs or refused); ``verify=False`` skips
both for trusted deployments. Thread-safe: the predictor holds no
per-call state, and the backends may be shared.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, InputError
from ..hints import command
from ..inputs import model_inputs
from ..postprocess import MaskResult, postprocess_batch
from ..preprocess import ImageSource, Letterbox
from .backends import Backend, check_execution, open_backend
from .devices import parse_device
from .engine_sidecar import engine_file
from .graph_chain import GraphChain
from .manifest import Manifest, open_tokenizer, read_manifest, verify_files
from .verified_on import check_here

# backends whose precision numerics are the CPU's (the verified-on rule applies)
CPU_CHECKED_BACKENDS = ("onnxruntime", "openvino")

MAX_PAIRS_PER_CALL = 100_000
log = logging.getLogger(__name__)


def check_pairs(pairs: object) -> list[tuple[ImageSource, str]]:
    """``pairs`` as a list of (image, text) 2-tuples, or an InputError naming the bad item."""
    if isinstance(pairs, tuple) and len(pairs) == 2 and isinstance(pairs[1], str):
        raise InputError("predict_batch takes a list of (image, text) pairs; use predict()")
    if pairs is None or isinstance(pairs, (str, bytes, dict)) or not hasattr(pairs, "__iter__"):
        raise InputError(
            f"predict_batch takes a list of (image, text) pairs, got {type(pairs).__name__}"
        )
    out = []
    for i, pair in enumerate(pairs):  # type: ignore[union-attr]
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InputError(
                f"pair {i} must be an (image, text) 2-tuple, got {type(pair).__name__}"
                + (f" of length {len(pair)}" if isinstance(pair, (tuple, list)) else "")
            )
        out.append((pair[0], pair[1]))
        if len(out) > MAX_PAIRS_PER_CALL:
            raise InputError(
                f"more than {MAX_PAIRS_PER_CALL} pairs in one call; stream them in chunks "
                "(or use dit-deploy batch for datasets)"
            )
    return out


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
        verify: bool = True,
        backend_options: dict | None = None,
    ) -> None:
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise InputError(f"max_batch must be a positive integer, got {max_batch!r}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise InputError(f"threads must be a positive integer or None, got {threads!r}")
        parse_device(device)  # cpu, cuda, cuda:N, tensorrt[:N]; anything else is refused here
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
        self.layout, self.precision = layout, precision
        self.backend_name, self.device = backend, device
        self._threads, self._cuda_graph = threads, cuda_graph
        self.backend_options = dict(backend_options or {})
        self.chain = GraphChain(layout, self._open)
        # the artifact first: a changed or missing file is reported before backends load
        for role in self.chain.roles:
            self.manifest.graph(role, precision, self.export_dir)
        if verify:
            verify_files(self.export_dir, self.manifest, self.chain.roles, precision)
        self.tokenizer = open_tokenizer(self.export_dir, self.manifest)
        self.max_batch = max_batch
        self._warned: set[str] = set()
        self.chain.open_all()
        # "run" or "reverified" on this CPU (runtime/verified_on.py); GPUs have engine sidecars
        self.verified_here = "unchecked"
        if verify and device == "cpu" and backend in CPU_CHECKED_BACKENDS:
            self.verified_here = check_here(
                self.export_dir, self.manifest, precision, layout, self.chain.logits
            )

    @property
    def graphs(self) -> dict[str, Backend]:
        """Role -> opened backend, in chain order."""
        return self.chain.backends

    def _open(self, role: str) -> Backend:
        """``<role>[.<precision>].onnx``, or for ``tensorrt`` its ``.engine`` (+ sidecar)."""
        spec = self.manifest.graph(role, self.precision, self.export_dir)
        check_execution(self.backend_name, spec.execution)
        if self.backend_name != "tensorrt":
            options = dict(self.backend_options)
            if self.backend_name == "onnxruntime":  # the TensorRT provider's flags and profile
                options = {"precision": self.precision, "max_batch": self.max_batch, **options}
            return open_backend(
                self.backend_name,
                self.export_dir / spec.file,
                self.device,
                self._threads,
                execution=spec.execution,
                **options,
            )
        engine = self.export_dir / engine_file(spec.file)
        if not engine.is_file():
            build = command("engines", self.export_dir, "--precision", self.precision)
            raise ArtifactError(
                f"{self.export_dir} has no TensorRT engine {engine.name}; build it on this "
                f"machine with: {build}"
            )
        if self.device == "cpu":
            raise InputError("the tensorrt backend runs on a GPU: pass device='cuda' (or 'cuda:N')")
        return open_backend(
            "tensorrt",
            engine,
            self.device,
            self._threads,
            cuda_graph=self._cuda_graph,
            source_sha256=spec.sha256 or None,
        )

    def prepare(
        self, images: Sequence[ImageSource], texts: Sequence[str]
    ) -> tuple[dict[str, np.ndarray], list[Letterbox]]:
        """Model inputs (``image`` (B,3,S,S), ``input_ids``/``attention_mask`` (B,L) int64)
        and each image's letterbox record."""
        m = self.manifest
        return model_inputs(images, texts, self.tokenizer, m.input_size, m.pixel_mean, m.pixel_std)

    def low_res_logits(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """(B, 1, S/4, S/4) logits for prepared inputs."""
        return self.chain.logits(feeds)

    def predict_batch(self, pairs: Sequence[tuple[ImageSource, str]]) -> list[MaskResult]:
        """Masks for (image, expression) pairs, run ``max_batch`` pairs at a time."""
        pairs = check_pairs(pairs)
        results: list[MaskResult] = []
        for start in range(0, len(pairs), self.max_batch):
            chunk = pairs[start : start + self.max_batch]
            images, texts = zip(*chunk, strict=True)
            feeds, boxes = self.prepare(images, texts)
            masks = postprocess_batch(
                self.low_res_logits(feeds), boxes, self.manifest.mask_threshold
            )
            for result, text in zip(masks, texts, strict=True):
                result.tokens = self.tokenizer.encode(text).tokens
                if "[UNK]" in result.tokens:
                    self._warn_unknown(text)
            results += masks
        return results

    def _warn_unknown(self, text: str) -> None:
        """Say once per expression text that part of it is outside the model's vocabulary."""
        if text in self._warned or len(self._warned) > 1000:
            return
        self._warned.add(text)
        pieces = self.tokenizer.tokenize(text)
        words = [w for w in text.split() if "[UNK]" in self.tokenizer.tokenize(w)]
        log.warning(
            "%s: %d of %d word pieces of %r are outside the model's vocabulary (%s): the "
            "model reads them as [UNK]%s",
            self.manifest.config_name,
            pieces.count("[UNK]"),
            len(pieces),
            text,
            ", ".join(words) or "?",
            "; the bundled model knows only its synthetic world (shapes, colours, positions)"
            if self.manifest.source.get("pretrained") == "dit-tiny-synthetic"
            else "",
        )

    def predict(self, image: ImageSource, text: str) -> MaskResult:
        """Mask (bool, original H x W) and score for one image and one expression."""
        return self.predict_batch([(image, text)])[0]

    def close(self) -> None:
        """Release the backends (sessions, engines, device buffers)."""
        self.chain.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
