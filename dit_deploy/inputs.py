"""The model's inputs for (image, expression) pairs: one function every backend calls."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .preprocess import ImageSource, Letterbox, preprocess_batch
from .tokenizer import WordPieceTokenizer


def model_inputs(
    images: Sequence[ImageSource],
    texts: Sequence[str],
    tokenizer: WordPieceTokenizer,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[dict[str, np.ndarray], list[Letterbox]]:
    """``image`` (B, 3, size, size) float32, ``input_ids`` and ``attention_mask`` (B, L) int64,
    plus each image's letterbox record for post-processing."""
    batch, boxes = preprocess_batch(images, size, mean, std)
    ids, mask = tokenizer.encode_batch(list(texts))
    return {"image": batch, "input_ids": ids, "attention_mask": mask}, boxes
