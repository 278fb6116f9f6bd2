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
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, InputError
from ..hints import command
from ..inputs import model_inputs
from ..postprocess import MaskResult, postprocess_batch
from ..preprocess import ImageSource, Letterbox
from .backends import Backend, GraphRequest, backend_row, check_execution
from .devices import parse_device
from .export import Export
from .graph_chain import GraphChain
from .verified_on import check_here

MAX_PAIRS_PER_CALL = 100_000
# more threads than this only queue on the cores (ONNX Runtime took minutes to open 3000)
MAX_THREADS = 4 * (os.cpu_count() or 1)
log = logging.getLogger(__name__)


def _count(value: object, name: str, most: int | None = None) -> int:
    """``value`` as an int >= 1 (and <= ``most``), or the InputError naming ``name``."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    if most is not None and value > most:
        raise InputError(f"{name} must be at most {most} (4 per CPU here), got {value}")
    return int(value)


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
    """Runs an export (split or fused graphs) on one backend and device.

    ``export``: an export directory or an :class:`Export`; ``backend``: a row of the backend
    table (``runtime.backends.table``); ``device``: ``cpu``, ``cuda[:N]``, ``tensorrt[:N]``
    (None: the backend's default).
    """

    def __init__(
        self,
        export: str | Path | Export,
        backend: str = "onnxruntime",
        device: str | None = None,
        layout: str | None = None,
        threads: int | None = None,
        max_batch: int = 8,
        precision: str = "fp32",
        cuda_graph: bool = False,
        verify: bool = True,
        backend_options: dict | None = None,
    ) -> None:
        max_batch = _count(max_batch, "max_batch")
        if threads is not None:
            threads = _count(threads, "threads", most=MAX_THREADS)
        for name, value in (("backend", backend), ("precision", precision)):
            if not isinstance(value, str):
                raise InputError(f"{name} must be a name (str), got {value!r}")
        if backend_options is not None and not isinstance(backend_options, Mapping):
            kind = type(backend_options).__name__
            raise InputError(f"backend_options must be a dict, got {kind}")
        row = backend_row(backend)
        device = row.default_device if device is None else device
        kind = parse_device(device)[0]  # cpu, cuda, cuda:N, tensorrt[:N]; others refused here
        if kind not in row.devices:
            raise InputError(
                f"the {backend} backend runs on {' or '.join(row.devices)}, not {device!r}: "
                f"pass device={row.default_device!r}"
            )
        self.export = Export.open(export)
        self.export_dir, self.manifest = self.export.path, self.export.manifest
        self.layout, self.precision = self.export.layout(layout), precision
        self.backend_name, self.device, self._row = backend, device, row
        self._threads, self._cuda_graph = threads, cuda_graph
        self.backend_options = dict(backend_options or {})
        self.max_batch, self._verify = max_batch, verify
        self.chain = GraphChain(self.layout, self._open)
        # the artifact first: a changed or missing file is reported before backends load
        for role in self.chain.roles:
            self.export.graph(role, precision)
        if verify:
            self.export.verify(self.chain.roles, precision)
        self.tokenizer = self.export.tokenizer()
        self._warned: set[str] = set()
        self.chain.open_all()
        # "run" or "reverified" on this CPU (runtime/verified_on.py); GPUs have engine sidecars
        self.verified_here = "unchecked"
        if verify and kind == "cpu" and row.cpu_numerics:
            self.verified_here = check_here(
                self.export_dir, self.manifest, precision, self.layout, self.chain.logits
            )

    @property
    def graphs(self) -> dict[str, Backend]:
        """Role -> opened backend, in chain order."""
        return self.chain.backends

    def _open(self, role: str) -> Backend:
        """The backend table's artifact for ``role`` (``<role>[.<precision>].onnx``, or a
        built engine), opened by the table's opener."""
        spec = self.export.graph(role, self.precision)
        if self._verify:  # every open, a reopen after close() too: the file may have changed
            self.export.verify((role,), self.precision)
        mode = check_execution(self.backend_name, spec.execution)
        path = self._row.artifact_path(self.export_dir, spec)
        if not path.is_file():
            build = command("engines", self.export_dir, "--precision", self.precision)
            raise ArtifactError(
                f"{self.export_dir} has no {self._row.artifact_label} {path.name}; build it "
                f"on this machine with: {build}"
            )
        request = GraphRequest(
            path,
            self.device,
            self._threads,
            precision=self.precision,
            execution=mode,
            max_batch=self.max_batch,
            inputs=tuple(spec.inputs),
            source_sha256=spec.sha256,
            cuda_graph=self._cuda_graph,
            options=self.backend_options,
        )
        return self._row.open(request)

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
