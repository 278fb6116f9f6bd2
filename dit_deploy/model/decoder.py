"""DIT's mask decoder: SAM's, with one prompt set per image (no repeat-interleave)."""

from __future__ import annotations

import torch

from .config import DecoderConfig
from .sam_modules import MaskDecoder, TwoWayTransformer


class DITMaskDecoder(MaskDecoder):
    """SAM ``MaskDecoder`` parameters; ``predict_masks`` pairs image i with prompt set i."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__(
            transformer_dim=config.transformer_dim,
            transformer=TwoWayTransformer(
                depth=config.depth,
                embedding_dim=config.transformer_dim,
                mlp_dim=config.mlp_dim,
                num_heads=config.num_heads,
            ),
            num_multimask_outputs=config.num_multimask_outputs,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        )

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, h, w) embeddings + (B, N, C) prompts -> masks (B, T, 4h, 4w), iou (B, T)."""
        b, c, h, w = image_embeddings.shape
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)

        src = image_embeddings + dense_prompt_embeddings
        pos_src = image_pe.expand(b, -1, -1, -1)
        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )
        _, uc, uh, uw = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, uc, uh * uw)).reshape(b, -1, uh, uw)
        return masks, self.iou_prediction_head(iou_token_out)
