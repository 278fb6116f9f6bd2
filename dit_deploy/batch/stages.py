"""The three stages of the batch pipeline, as Ray Data batch functions (no Ray import here).

Each stage maps a batch (a dict of numpy columns, B rows) to a batch. A row that fails keeps
flowing with its ``error`` column set (empty string: no error), so one bad image never fails
a task and every input id reaches the writer exactly once.

1. :func:`prepare` (CPU task): decode + letterbox + tokenize with the same function the
   :class:`~dit_deploy.runtime.Predictor` uses (:func:`dit_deploy.inputs.model_inputs`), one
   row at a time so that a bad row is isolated.
   in: ``id, position, shard, image (path), text, gt`` -> adds ``pixels`` (B, 3, S, S) f32,
   ``input_ids``/``attention_mask`` (B, L) i64, ``letterbox`` (B, 7) i64, ``error``.
2. :class:`PredictorWorker` (actor, one :class:`~dit_deploy.runtime.Predictor` each): runs
   the graphs on the good rows. Replaces ``pixels`` by ``low_res`` (B, 1, S/4, S/4) f32.
3. :func:`finish` (CPU task): :func:`dit_deploy.postprocess.postprocess_batch`, COCO RLE
   (:mod:`dit_deploy.mask_codec`), optional PNG, and IoU against the ground truth when the row
   carries one. out: ``id, position, shard, image, text, error, score, mask (RLE JSON), png,
   iou, intersection, union``.
"""

from __future__ import annotations

import pickle
from dataclasses import fields
from typing import Any

import numpy as np

from ..errors import DITError, InputError
from ..inputs import model_inputs
from ..mask_codec import encode_png, rle_json
from ..metrics import mask_iou
from ..postprocess import postprocess_batch
from ..preprocess import Letterbox
from ..runtime.export import Export
from ..runtime.manifest import Manifest
from ..tokenizer import WordPieceTokenizer

Batch = dict[str, np.ndarray]
LETTERBOX_FIELDS = tuple(f.name for f in fields(Letterbox))
#: columns the driver receives (everything heavy is dropped before it)
RESULT_COLUMNS = (
    "id",
    "position",
    "shard",
    "image",
    "text",
    "error",
    "score",
    "mask",
    "png",
    "iou",
    "intersection",
    "union",
)


def _export(export_dir: str) -> tuple[Manifest, WordPieceTokenizer]:
    """The manifest and tokenizer of an export, read once per worker process."""
    export = Export.open(export_dir)
    return export.manifest, export.tokenizer()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).splitlines()) or type(exc).__name__


def prepare(batch: Batch, export_dir: str) -> Batch:
    """Stage 1: model inputs for every row; a bad image or text sets that row's ``error``."""
    manifest, tokenizer = _export(export_dir)
    size, n = manifest.input_size, len(batch["id"])
    pixels = np.zeros((n, 3, size, size), np.float32)
    ids = np.zeros((n, tokenizer.max_tokens), np.int64)
    attention = np.zeros((n, tokenizer.max_tokens), np.int64)
    boxes = np.zeros((n, len(LETTERBOX_FIELDS)), np.int64)
    errors = np.array([""] * n, dtype=object)
    for i in range(n):
        try:
            feeds, (box,) = model_inputs(
                [str(batch["image"][i])],
                [str(batch["text"][i])],
                tokenizer,
                size,
                manifest.pixel_mean,
                manifest.pixel_std,
            )
        except InputError as exc:  # ImageError (missing, corrupt) or TextError (empty)
            errors[i] = _one_line(exc)
            continue
        pixels[i] = feeds["image"][0]
        ids[i] = feeds["input_ids"][0]
        attention[i] = feeds["attention_mask"][0]
        boxes[i] = [getattr(box, name) for name in LETTERBOX_FIELDS]
    return {
        **batch,
        "pixels": pixels,
        "input_ids": ids,
        "attention_mask": attention,
        "letterbox": boxes,
        "error": errors,
    }


class PredictorWorker:
    """Stage 2: one :class:`~dit_deploy.runtime.Predictor` per actor (loaded once)."""

    def __init__(
        self,
        export_dir: str,
        backend: str,
        precision: str,
        layout: str,
        threads: int,
        batch_size: int,
        device: str,
    ) -> None:
        from ..runtime import Predictor

        self.predictor = Predictor(
            export_dir,
            backend=backend,
            device=device,
            layout=layout,
            threads=threads,
            max_batch=batch_size,
            precision=precision,
        )

    def __call__(self, batch: Batch) -> Batch:
        good = batch["error"] == ""
        side = self.predictor.manifest.input_size // 4
        low_res = np.zeros((len(good), 1, side, side), np.float32)
        if good.any():
            feeds = {
                "image": batch["pixels"][good],
                "input_ids": batch["input_ids"][good],
                "attention_mask": batch["attention_mask"][good],
            }
            low_res[good] = self.predictor.low_res_logits(feeds)
        out = {k: v for k, v in batch.items() if k not in ("pixels", "input_ids", "attention_mask")}
        out["low_res"] = low_res
        return out


def finish(batch: Batch, export_dir: str, png: bool) -> Batch:
    """Stage 3: masks on the original images, their RLE (and PNG), score and IoU."""
    manifest, _ = _export(export_dir)
    n = len(batch["id"])
    errors = np.array([str(e) for e in batch["error"]], dtype=object)
    scores = np.full(n, np.nan)
    masks = np.array([""] * n, dtype=object)
    pngs = np.array([b""] * n, dtype=object)
    ious = np.full(n, np.nan)
    inters = np.full(n, -1, np.int64)
    unions = np.full(n, -1, np.int64)
    good = np.flatnonzero(errors == "")
    if len(good):
        boxes = [Letterbox(*(int(v) for v in batch["letterbox"][i])) for i in good]
        results = postprocess_batch(batch["low_res"][good], boxes, manifest.mask_threshold)
        for i, result in zip(good, results, strict=True):
            try:
                if batch["gt"][i]:
                    ious[i], inters[i], unions[i] = _score(result.mask, batch["gt"][i])
            except DITError as exc:
                errors[i] = f"ground truth: {_one_line(exc)}"
                continue
            scores[i] = result.score
            masks[i] = rle_json(result.mask)
            if png:
                pngs[i] = encode_png(result.mask)
    keep = ("id", "position", "shard", "image", "text")
    return {
        **{k: batch[k] for k in keep},
        "error": errors,
        "score": scores,
        "mask": masks,
        "png": pngs,
        "iou": ious,
        "intersection": inters,
        "union": unions,
    }


def _score(mask: np.ndarray, gt: Any) -> tuple[float, int, int]:
    """(iou, intersection, union) of a predicted mask against a pickled mask source."""
    source = pickle.loads(bytes(gt))
    return mask_iou(mask, source.decode())
