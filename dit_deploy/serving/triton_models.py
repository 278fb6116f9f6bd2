"""Python-backend models of ``dit-deploy triton-repo`` and ``dit-deploy serve`` (run inside
tritonserver).

Each repository ``model.py`` is one line, ``from dit_deploy.serving.triton_models import
X as TritonPythonModel``, so the logic lives (and is tested) here. Only the torch-free runtime
is imported. ``triton_python_backend_utils`` exists only inside Triton's python-backend stub,
so it is imported in ``initialize``.

- :class:`Preprocess` (``dit_preprocess``): IMAGE, TEXT -> image (3, S, S) f32, input_ids and
  attention_mask (L) i64, LETTERBOX (7) i64; a request with a bad row gets Triton's own error
  response (INVALID_ARG: HTTP 400 / gRPC INVALID_ARGUMENT); the others go on.
- :class:`Pipeline` (``dit`` alone, for ``--backend python`` and ``dit-deploy serve``): all of
  it in one model, on any runtime backend of the Predictor.
- :class:`Postprocess` (``dit_postprocess``): low_res_logits + LETTERBOX -> MASK_PNG, MASK_RLE,
  SCORE, encoding only what the request asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..preprocess import Letterbox
from . import contract as c

LETTERBOX = "LETTERBOX"
LETTERBOX_FIELDS = ("orig_h", "orig_w", "new_h", "new_w", "top", "left", "size")
EXPORT_SUBDIR = "export"
EXPORT_LINK = "export.path"  # instead of export/: the path of an export read in place (serve)


def _parameters(args: dict) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def _version_dir(args: dict) -> Path:
    return Path(args["model_repository"]) / str(args["model_version"])


def _export_dir(args: dict) -> Path:
    link = _version_dir(args) / EXPORT_LINK
    return Path(link.read_text().strip()) if link.is_file() else _version_dir(args) / EXPORT_SUBDIR


def _input(pb, request, name: str) -> np.ndarray:
    return pb.get_input_tensor_by_name(request, name).as_numpy()


class Preprocess:
    """Decode, letterbox and tokenize, driven by the copied manifest."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb

        from ..runtime.manifest import Manifest
        from ..tokenizer import WordPieceTokenizer

        self.pb = pb
        export = _version_dir(args) / EXPORT_SUBDIR
        # the graphs live in dit_model: the manifest is read for its preprocessing fields only
        self.manifest = Manifest.from_dict(json.loads((export / "manifest.json").read_text()))
        tok = self.manifest.tokenizer
        self.tokenizer = WordPieceTokenizer.from_vocab_file(
            export / tok["vocab_file"], lowercase=tok["lowercase"], max_tokens=tok["max_tokens"]
        )
        params = _parameters(args)
        self.max_pixels = int(params.get("max_pixels") or c.SERVE_MAX_PIXELS)
        self.max_bytes = int(params.get("max_image_bytes") or c.MAX_IMAGE_BYTES)

    def execute(self, requests):
        from ..inputs import model_inputs

        pb, m = self.pb, self.manifest
        responses = []
        for request in requests:
            rows = _checked_rows(
                pb, request, m.input_size, self.max_pixels, self.max_bytes, self.tokenizer.encode
            )
            if not isinstance(rows, list):
                responses.append(pb.InferenceResponse(output_tensors=[], error=rows))
                continue
            feeds, boxes = model_inputs(
                [r.image for r in rows],
                [r.text for r in rows],
                self.tokenizer,
                m.input_size,
                m.pixel_mean,
                m.pixel_std,
            )
            letterbox = np.array(
                [[getattr(b, f) for f in LETTERBOX_FIELDS] for b in boxes], dtype=np.int64
            )
            tensors = [pb.Tensor(k, np.ascontiguousarray(v)) for k, v in feeds.items()]
            responses.append(pb.InferenceResponse([*tensors, pb.Tensor(LETTERBOX, letterbox)]))
        return responses


class Pipeline:
    """The whole served model in one python model (``dit`` of ``--backend python`` and of
    ``dit-deploy serve``): validate each row, run the good rows of every request together
    through the Predictor (any runtime backend), encode only the requested outputs.

    A request with a bad row gets Triton's error response (INVALID_ARG: HTTP 400 / gRPC
    INVALID_ARGUMENT, counted as a failure) and the others of the batch go on. A backend
    failure fails the batch's requests with INTERNAL: a server error, not the client's.
    """

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb

        from ..runtime import Predictor

        self.pb = pb
        params = _parameters(args)
        device = params.get("device", "cpu")
        if device != "cpu":  # each GPU instance on the GPU Triton placed it on, not GPU 0
            device = f"{device.split(':')[0]}:{int(args.get('model_instance_device_id', 0))}"
        threads = int(params.get("threads") or 0) or None
        self.predictor = Predictor(
            _export_dir(args),
            backend=params.get("runtime", "onnxruntime"),
            device=device,
            precision=params.get("precision", "fp32"),
            layout=params.get("layout") or None,
            threads=threads,
            max_batch=int(params.get("max_batch", 8)),
        )
        self.max_pixels = int(params.get("max_pixels") or c.SERVE_MAX_PIXELS)
        self.max_bytes = int(params.get("max_image_bytes") or c.MAX_IMAGE_BYTES)

    def execute(self, requests):
        pb, predictor = self.pb, self.predictor
        checked = [
            _checked_rows(
                pb, request, predictor.manifest.input_size, self.max_pixels, self.max_bytes,
                predictor.tokenizer.encode,
            )
            for request in requests
        ]  # fmt: skip
        good = [(i, row) for i, rows in enumerate(checked) if isinstance(rows, list)
                for row in rows]  # fmt: skip
        try:
            results = predictor.predict_batch([(r.image, r.text) for _, r in good]) if good else []
        except Exception as exc:  # noqa: BLE001 - the batch failed on the server's side
            error = pb.TritonError(f"inference failed: {exc}", pb.TritonError.INTERNAL)
            return [pb.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        per_request: dict[int, list] = {}
        for (i, _), result in zip(good, results, strict=True):
            per_request.setdefault(i, []).append(result)
        responses = []
        for i, (request, rows) in enumerate(zip(requests, checked, strict=True)):
            if not isinstance(rows, list):
                responses.append(pb.InferenceResponse(output_tensors=[], error=rows))
                continue
            responses.append(_encoded_response(pb, request, per_request[i]))
        return responses


def _checked_rows(pb, request, input_size, max_pixels, max_bytes, check_text):
    """The request's validated rows, or the TritonError (INVALID_ARG) naming its bad rows."""
    images = _input(pb, request, c.IMAGE).reshape(-1)
    texts = _input(pb, request, c.TEXT).reshape(-1)
    if len(images) != len(texts):
        return pb.TritonError(
            f"IMAGE has {len(images)} rows but TEXT has {len(texts)}; send one per pair",
            pb.TritonError.INVALID_ARG,
        )
    over = c.request_budget_error(images, max_pixels, max_bytes)
    if over:
        return pb.TritonError(over, pb.TritonError.INVALID_ARG)
    rows = c.validate_rows(images, texts, input_size, max_pixels, check_text, max_bytes)
    bad = [f"row {i}: {r.error}" if len(rows) > 1 else r.error
           for i, r in enumerate(rows) if r.error]  # fmt: skip
    if bad:
        return pb.TritonError("; ".join(bad), pb.TritonError.INVALID_ARG)
    return rows


def _encoded_response(pb, request, results):
    """The requested outputs (all three when none is named) of one request's results."""
    want = request.requested_output_names() or c.OUTPUTS
    rows = [c.encode_outputs(r, want) for r in results]
    out = c.stack_outputs(rows, [n for n in c.OUTPUTS if n in want])
    return pb.InferenceResponse([pb.Tensor(k, v) for k, v in out.items()])


class Postprocess:
    """Un-letterbox, threshold, encode: the same :func:`postprocess_batch` as the Predictor."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb

        self.pb = pb
        self.threshold = float(_parameters(args)["mask_threshold"])

    def execute(self, requests):
        from ..postprocess import postprocess_batch

        pb = self.pb
        responses = []
        for request in requests:
            logits = _input(pb, request, "low_res_logits")
            boxes = [
                Letterbox(**dict(zip(LETTERBOX_FIELDS, map(int, row), strict=True)))
                for row in _input(pb, request, LETTERBOX)
            ]
            results = postprocess_batch(logits, boxes, self.threshold)
            responses.append(_encoded_response(pb, request, results))
        return responses
