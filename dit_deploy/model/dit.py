"""The DIT network: text encoder -> DIT image encoder -> SAM mask decoder.

``DIT.forward`` is a pure function of tensors (no loss, no thresholding): training,
export and the reference backend all call the same three stages.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import DITConfig
from .decoder import DITMaskDecoder
from .encoder import DITImageEncoder
from .sam_modules import PromptEncoder
from .text_encoder import TextEncoder


class DITOutput(NamedTuple):
    low_res_logits: torch.Tensor  # (B, 1, H/4, W/4)
    iou_pred: torch.Tensor  # (B, 1); SAM's quality head, not trained by DIT's loss


class DIT(nn.Module):
    """Module names follow the authors' checkpoints: visual_encoder, prompt_encoder,
    mask_decoder, lang_encoder.bert, text_proj."""

    def __init__(self, config: DITConfig) -> None:
        super().__init__()
        self.config = config
        grid = config.encoder.build_size // config.encoder.patch_size
        dec = config.decoder
        self.lang_encoder = TextEncoder(config.text_encoder)
        self.visual_encoder = DITImageEncoder(config)
        self.prompt_encoder = PromptEncoder(
            embed_dim=dec.transformer_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.encoder.build_size, config.encoder.build_size),
            mask_in_chans=dec.mask_in_chans,
        )
        self.mask_decoder = DITMaskDecoder(dec)
        self.text_proj = nn.Linear(config.text_encoder.hidden_size, dec.transformer_dim)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) int64 ids and mask -> (B, L, text_width) text features."""
        return self.lang_encoder(input_ids, attention_mask)

    def encode_image(self, image: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised image + text features -> (B, C, S/16, S/16) embedding."""
        return self.visual_encoder(image, text_features)

    def decode(self, image_embedding: torch.Tensor, text_features: torch.Tensor) -> DITOutput:
        """Image embedding + text features -> low-res logits (B, 1, S/4, S/4) and iou (B, 1)."""
        b, _, h, w = image_embedding.shape
        sparse = self.text_proj(text_features)  # the 20 text tokens are the prompts
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, h, w)
        image_pe = self.prompt_encoder.pe_layer((h, w)).unsqueeze(0)  # at the real grid
        masks, iou = self.mask_decoder(
            image_embeddings=image_embedding,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return DITOutput(masks, iou)

    def forward(
        self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> DITOutput:
        text = self.encode_text(input_ids, attention_mask)
        return self.decode(self.encode_image(image, text), text)


def upsample_logits(low_res_logits: torch.Tensor) -> torch.Tensor:
    """x4 bilinear, align_corners=True (the authors' ``nn.UpsamplingBilinear2d(4)``)."""
    return F.interpolate(low_res_logits, scale_factor=4, mode="bilinear", align_corners=True)


def build_dit(config: DITConfig) -> DIT:
    """A randomly initialised DIT (SAM's init, zero ``probs``); load weights separately."""
    return DIT(config)
