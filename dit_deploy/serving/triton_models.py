"""Python-backend models of the ``dit-deploy triton-repo`` ensemble (run inside tritonserver).

Each repository ``model.py`` is one line, ``from dit_deploy.serving.triton_models import
X as TritonPythonModel``, so the logic lives (and is tested) here. Only the torch-free runtime
is imported. ``triton_python_backend_utils`` exists only inside Triton's python-backend stub,
so it is imported in ``initialize``.

- :class:`Preprocess` (``dit_preprocess``): IMAGE, TEXT -> image (3, S, S) f32, input_ids and
  attention_mask (L) i64, LETTERBOX (7) i64; a request with a bad row gets Triton's own error
  response (INVALID_ARG: HTTP 400 / gRPC INVALID_ARGUMENT); the others go on.
- :class:`Model` (``dit_model`` with ``--backend python``): the Predictor's graphs.
- :class:`Postprocess` (``dit_postprocess``): low_res_logits + LETTERBOX -> MASK_PNG, MASK_RLE,
  SCORE, encoding only what the request asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..preprocess import DEFAULT_MAX_PIXELS, Letterbox
from . import contract as c

LETTERBOX = "LETTERBOX"
LETTERBOX_FIELDS = ("orig_h", "orig_w", "new_h", "new_w", "top", "left", "size")
EXPORT_SUBDIR = "export"


def _parameters(args: dict) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def _version_dir(args: dict) -> Path:
    return Path(args["model_repository"]) / str(args["model_version"])


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
        self.max_pixels = int(_parameters(args).get("max_pixels", DEFAULT_MAX_PIXELS))

    def execute(self, requests):
        from ..inputs import model_inputs

        pb, m = self.pb, self.manifest
        responses = []
        for request in requests:
            rows = c.validate_rows(
                _input(pb, request, c.IMAGE).reshape(-1),
                _input(pb, request, c.TEXT).reshape(-1),
                m.input_size,
                self.max_pixels,
                self.tokenizer.encode,
            )
            bad = [
                f"row {i}: {r.error}" if len(rows) > 1 else r.error
                for i, r in enumerate(rows)
                if r.error
            ]
            if bad:
                error = pb.TritonError("; ".join(bad), pb.TritonError.INVALID_ARG)
                responses.append(pb.InferenceResponse(output_tensors=[], error=error))
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


class Model:
    """The Predictor's graphs (fused or split) on ONNX Runtime: feeds -> low_res_logits."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb

        from ..runtime import Predictor

        self.pb = pb
        params = _parameters(args)
        device = params.get("device", "cpu")
        if device != "cpu":  # each GPU instance on the GPU Triton placed it on, not GPU 0
            device = f"{device.split(':')[0]}:{int(args.get('model_instance_device_id', 0))}"
        self.predictor = Predictor(
            _version_dir(args) / EXPORT_SUBDIR,
            backend="onnxruntime",
            device=device,
            precision=params.get("precision", "fp32"),
            layout=params.get("layout") or None,
            max_batch=int(params.get("max_batch", 8)),
        )

    def execute(self, requests):
        pb = self.pb
        names = ("image", "input_ids", "attention_mask")
        feeds = [{n: _input(pb, r, n) for n in names} for r in requests]
        sizes = [f["image"].shape[0] for f in feeds]
        batch = {n: np.concatenate([f[n] for f in feeds]) for n in names}
        logits = self.predictor.low_res_logits(batch)
        parts = np.split(logits, np.cumsum(sizes)[:-1])
        return [pb.InferenceResponse([pb.Tensor("low_res_logits", p)]) for p in parts]


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
            want = request.requested_output_names() or c.OUTPUTS
            rows = [c.encode_outputs(r, want) for r in results]
            out = c.stack_outputs(rows, [n for n in c.OUTPUTS if n in want])
            responses.append(pb.InferenceResponse([pb.Tensor(k, v) for k, v in out.items()]))
        return responses
