"""``DITModel``: the PyTorch reference model with its tokenizer and pre/post-processing.

model = DITModel.from_checkpoint("dit_refcoco.pth", config="layer_wise_vit_b",
                                 text_encoder="bert-base-uncased/")
result = model.predict("horse.jpg", "pretty prancing gray horse with blue halter")
result.mask   # bool (H, W) at the original resolution
result.score  # mean foreground probability in [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError
from ..inputs import model_inputs
from ..postprocess import MaskResult, postprocess_batch
from ..preprocess import ImageSource
from ..tokenizer import WordPieceTokenizer
from . import checkpoint as ckpt
from .config import DITConfig, get_config
from .dit import DIT, build_dit

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def _resolve_config(config: str | DITConfig, **overrides: Any) -> DITConfig:
    if isinstance(config, DITConfig):
        return config.replace(**overrides) if overrides else config
    return get_config(config, **overrides)


def _vocab_from(text_encoder: str | Path | None, vocab: str | Path | None) -> Path:
    if vocab is not None:
        return Path(vocab)
    if text_encoder is not None:
        return Path(text_encoder) / ckpt.VOCAB_FILE
    raise ConfigError(
        "no tokenizer vocabulary: pass --text-encoder DIR (the BERT directory with vocab.txt) "
        "or --vocab FILE (Python: text_encoder= or vocab=)"
    )


class DITModel:
    """A DIT network + its tokenizer; ``predict`` goes from image and text to a mask."""

    def __init__(self, network: DIT, tokenizer: WordPieceTokenizer, vocab_file: Path | None = None):
        self.network = network.eval()
        self.config: DITConfig = network.config
        self.tokenizer = tokenizer
        self.vocab_file = vocab_file
        self.load_reports: list[ckpt.LoadReport] = []

    # ---- construction ---------------------------------------------------------------

    @classmethod
    def _new(cls, config: DITConfig, vocab_file: Path) -> DITModel:
        tokenizer = WordPieceTokenizer.from_vocab_file(
            vocab_file, lowercase=config.text_encoder.lowercase, max_tokens=config.max_tokens
        )
        if len(tokenizer.vocab) > config.text_encoder.vocab_size:
            raise ConfigError(
                f"vocabulary {vocab_file} has {len(tokenizer.vocab)} entries but the text "
                f"encoder of {config.name!r} embeds only {config.text_encoder.vocab_size}; "
                "pass the vocab.txt of the text encoder the model was trained with"
            )
        return cls(build_dit(config), tokenizer, vocab_file)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        config: str | DITConfig = "layer_wise_vit_b",
        text_encoder: str | Path | None = None,
        vocab: str | Path | None = None,
        **overrides: Any,
    ) -> DITModel:
        """Load a DIT checkpoint in the authors' format (``{'state_dict': ...}``).

        The checkpoint holds the (fine-tuned) BERT weights too; ``text_encoder`` is the
        BERT directory the model was trained from and supplies the vocabulary and a
        shape check.
        """
        if not Path(checkpoint).is_file():  # named before the vocabulary or the config
            raise CheckpointError(f"checkpoint not found: {checkpoint}")
        cfg = _resolve_config(config, **overrides)
        if text_encoder is not None:
            ckpt.check_text_encoder_matches(cfg, text_encoder)
        model = cls._new(cfg, _vocab_from(text_encoder, vocab))
        model.load_reports.append(ckpt.load_dit_checkpoint(model.network, checkpoint))
        return model

    @classmethod
    def from_sam(
        cls,
        sam_checkpoint: str | Path | None,
        config: str | DITConfig,
        text_encoder: str | Path,
        **overrides: Any,
    ) -> DITModel:
        """Initialise for training: SAM weights (if given) + a pretrained BERT directory."""
        cfg = _resolve_config(config, **overrides)
        model = cls._new(cfg, _vocab_from(text_encoder, None))
        if sam_checkpoint is not None:
            model.load_reports.append(ckpt.load_sam_checkpoint(model.network, sam_checkpoint))
        model.load_reports.append(ckpt.load_text_encoder(model.network, text_encoder))
        return model

    @staticmethod
    def resolve_pretrained(name_or_dir: str | Path) -> Path:
        """The directory of a model in our format: a path, or a bundled model's name."""
        path = Path(name_or_dir)
        if not path.is_dir() and (ASSETS / str(name_or_dir)).is_dir():
            path = ASSETS / str(name_or_dir)
        if not path.is_dir():
            bundled = sorted(p.parent.name for p in ASSETS.glob(f"*/{ckpt.CONFIG_FILE}"))
            raise CheckpointError(
                f"no model directory or bundled model named {str(name_or_dir)!r}; "
                f"bundled: {bundled or 'none'}"
            )
        return path

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path) -> DITModel:
        """Load our format: a directory (or a bundled model name) with config + safetensors."""
        path = cls.resolve_pretrained(name_or_dir)
        model = cls._new(ckpt.read_pretrained_config(path), path / ckpt.VOCAB_FILE)
        model.load_reports.append(ckpt.load_pretrained_weights(model.network, path))
        return model

    def save_pretrained(self, out_dir: str | Path) -> Path:
        return ckpt.save_pretrained(self.network, out_dir, self.vocab_file)

    def to(self, device: str | torch.device) -> DITModel:
        self.network.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    # ---- inference ------------------------------------------------------------------

    def prepare(
        self, images: Sequence[ImageSource], texts: Sequence[str]
    ) -> tuple[dict[str, np.ndarray], list]:
        """Numpy inputs for the network (``image``, ``input_ids``, ``attention_mask``)."""
        cfg = self.config
        return model_inputs(
            images, texts, self.tokenizer, cfg.input_size, cfg.pixel_mean, cfg.pixel_std
        )

    @torch.inference_mode()
    def low_res_logits(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """(B, 1, S/4, S/4) float32 logits for prepared inputs."""
        dev = self.device
        out = self.network(
            torch.from_numpy(feeds["image"]).to(dev),
            torch.from_numpy(feeds["input_ids"]).to(dev),
            torch.from_numpy(feeds["attention_mask"]).to(dev),
        )
        return out.low_res_logits.float().cpu().numpy()

    def predict_batch(self, pairs: Sequence[tuple[ImageSource, str]]) -> list[MaskResult]:
        """Masks for (image, expression) pairs; one image may appear with many expressions."""
        if not pairs:
            return []
        images, texts = zip(*pairs, strict=True)
        feeds, boxes = self.prepare(images, texts)
        return postprocess_batch(self.low_res_logits(feeds), boxes, self.config.mask_threshold)

    def predict(self, image: ImageSource, text: str) -> MaskResult:
        """The mask (original H x W, bool) and score for one image and one expression."""
        return self.predict_batch([(image, text)])[0]
