"""Modules that exist only for export (the training model stays as it is).

They fold everything that depends only on the fixed input size (position tables, the
dense positional encoding) into constants, and write BERT's few layers with plain
ops and an additive padding mask, so the graphs are small and free of dynamic
shape logic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..model.dit import DIT
from ..model.encoder import PositionTables


class TextEncoderForExport(nn.Module):
    """(B, L) ids, (B, L) mask -> (B, L, D) features: BERT embeddings + the used layers."""

    def __init__(self, net: DIT) -> None:
        super().__init__()
        bert = net.lang_encoder.bert
        self.embeddings = bert.embeddings
        self.layers = bert.encoder.layer
        self.max_tokens = net.config.max_tokens
        act = net.config.text_encoder.hidden_act
        if act != "gelu":
            raise ValueError(f"export supports BERT hidden_act 'gelu', not {act!r}")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        emb = self.embeddings
        positions = emb.position_embeddings.weight[: self.max_tokens]
        x = emb.word_embeddings(input_ids) + positions + emb.token_type_embeddings.weight[0]
        x = emb.LayerNorm(x)
        # BERT's additive padding mask; DIT itself sees every position afterwards
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            att = layer.attention.self
            b, n, _ = x.shape
            heads, dim = att.num_attention_heads, att.attention_head_size

            def split(t: torch.Tensor, b=b, n=n, heads=heads, dim=dim) -> torch.Tensor:
                return t.reshape(b, n, heads, dim).transpose(1, 2)

            q, k, v = split(att.query(x)), split(att.key(x)), split(att.value(x))
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(dim) + bias
            ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, heads * dim)
            x = layer.attention.output.LayerNorm(layer.attention.output.dense(ctx) + x)
            hidden = F.gelu(layer.intermediate.dense(x))
            x = layer.output.LayerNorm(layer.output.dense(hidden) + x)
        return x


class EncoderForExport(nn.Module):
    """(B, 3, S, S) image, (B, L, D) text -> (B, C, S/16, S/16); tables are constants."""

    def __init__(self, net: DIT) -> None:
        super().__init__()
        self.encoder = net.visual_encoder
        grid = net.config.grid_size
        with torch.no_grad():
            tables = self.encoder.position_tables(grid, grid)
        self.register_buffer("abs_pos", tables.absolute)
        for i, rel in enumerate(tables.relative):
            self.register_buffer(f"rel_h_{i}", None if rel is None else rel[0])
            self.register_buffer(f"rel_w_{i}", None if rel is None else rel[1])

    def forward(self, image: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        rel = []
        for i in range(len(self.encoder.blocks)):
            h, w = getattr(self, f"rel_h_{i}"), getattr(self, f"rel_w_{i}")
            rel.append(None if h is None else (h, w))
        return self.encoder.forward_with_tables(
            image, text_features, PositionTables(self.abs_pos, rel)
        )


class DecoderForExport(nn.Module):
    """(B, C, g, g) embedding, (B, L, D) text -> low-res logits (B, 1, 4g, 4g), iou (B, 1)."""

    def __init__(self, net: DIT) -> None:
        super().__init__()
        self.text_proj = net.text_proj
        self.mask_decoder = net.mask_decoder
        grid = net.config.grid_size
        with torch.no_grad():
            pe = net.prompt_encoder.pe_layer((grid, grid)).unsqueeze(0)
        self.register_buffer("image_pe", pe)
        self.register_buffer("dense", net.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1))

    def forward(
        self, image_embedding: torch.Tensor, text_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        masks, iou = self.mask_decoder.predict_masks(
            image_embeddings=image_embedding,
            image_pe=self.image_pe,
            sparse_prompt_embeddings=self.text_proj(text_features),
            dense_prompt_embeddings=self.dense,
        )
        return masks[:, :1], iou[:, :1]  # multimask_output=False -> mask token 0


class FusedForExport(nn.Module):
    """ids, mask, image -> low-res logits, iou: one graph, fewest launches."""

    def __init__(self, net: DIT) -> None:
        super().__init__()
        self.text = TextEncoderForExport(net)
        self.encoder = EncoderForExport(net)
        self.decoder = DecoderForExport(net)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.text(input_ids, attention_mask)
        return self.decoder(self.encoder(image, text), text)
