"""DIT's image encoder: SAM's ViT with text tokens prepended in every block.

The parameters are SAM's ``ImageEncoderViT`` (so SAM and DIT checkpoints load by
name) plus DIT's per-block text projections ``probs`` and, when the text width
differs from the encoder width, ``prob_text``. The forward is DIT's own.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import DITConfig
from .sam_modules import ImageEncoderViT, get_rel_pos


def resize_abs_pos(pos_embed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """SAM's absolute position table (1, S, S, C) bicubically resized to (1, h, w, C)."""
    if pos_embed.shape[1] == h and pos_embed.shape[2] == w:
        return pos_embed
    resized = F.interpolate(
        pos_embed.permute(0, 3, 1, 2), size=(h, w), mode="bicubic", align_corners=False
    )
    return resized.permute(0, 2, 3, 1)


def rel_pos_as_features(
    q: torch.Tensor,
    k: torch.Tensor,
    num_text: int,
    r_h: torch.Tensor,
    r_w: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's decomposed relative-position bias, folded into the dot product.

    The bias of visual query i = (y, x) for visual key j = (y', x') is
    ``q_i . r_h[y, y'] + q_i . r_w[x, x']``. Appending those (h + w) numbers to each query and
    the matching one-hot row/column indicators to each key gives
    ``q'_i . k'_j = scale * q_i . k_j + bias_ij``: one matmul, no (L+hw)^2 bias tensor, and fused
    attention kernels apply. Text queries and keys get zeros: no positional bias.

    Args:
        q, k: (B, heads, L + h*w, dim), text first; q unscaled (SAM's bias uses it so).
        r_h: (h, h, dim) and r_w: (w, w, dim) tables from :func:`rel_pos_tables`.
    Returns:
        q', k': (B, heads, L + h*w, dim + h + w).
    """
    b, heads, n, dim = q.shape
    h, w = r_h.shape[0], r_w.shape[0]
    # batched matmuls, not einsum: OpenVINO lowers these einsums to broadcasts and
    # transposes around a plain matmul (ViT-B INT8 fused, 2-core AVX512-VNNI: 5% of the call)
    r_q = q[:, :, num_text:].reshape(b, heads, h, w, dim)
    rel_h = (r_q @ r_h.transpose(1, 2)).reshape(b, heads, h * w, h)
    rel_w = (r_q.transpose(2, 3) @ r_w.transpose(1, 2)).transpose(2, 3).reshape(b, heads, h * w, w)
    q_rel = F.pad(torch.cat([rel_h, rel_w], dim=-1), (0, 0, num_text, 0))
    rows = torch.eye(h, dtype=q.dtype, device=q.device).repeat_interleave(w, dim=0)
    cols = torch.eye(w, dtype=q.dtype, device=q.device).repeat(h, 1)
    k_rel = F.pad(torch.cat([rows, cols], dim=-1), (0, 0, num_text, 0))
    return (
        torch.cat([q * scale, q_rel], dim=-1),
        torch.cat([k, k_rel.expand(b, heads, n, h + w)], dim=-1),
    )


def rel_pos_tables(attn: nn.Module, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A block's tables (2S-1, dim) linearly resized to the grid and gathered: (h,h,dim), (w,w,dim).

    They depend only on the input size, so an export for a fixed size folds them.
    """
    return get_rel_pos(h, h, attn.rel_pos_h), get_rel_pos(w, w, attn.rel_pos_w)


def text_visual_attention(
    attn: nn.Module,
    x: torch.Tensor,
    num_text: int,
    tables: tuple[torch.Tensor, torch.Tensor] | None,
    use_sdpa: bool,
) -> torch.Tensor:
    """DIT attention: GLOBAL over [text; visual] tokens, rel-pos bias on visual x visual only.

    Args:
        attn: one of SAM's ``Attention`` modules (its qkv/proj/rel_pos parameters).
        x: (B, L + h*w, C) tokens, text first.
        tables: the block's :func:`rel_pos_tables`, or None without relative positions.
    Returns:
        (B, L + h*w, C).
    """
    b, n, c = x.shape
    heads = attn.num_heads
    q, k, v = attn.qkv(x).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    if tables is not None:
        q, k = rel_pos_as_features(q, k, num_text, *tables, scale=attn.scale)
    else:
        q = q * attn.scale
    if use_sdpa:
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
    else:
        out = (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(b, n, c))


class PositionTables(NamedTuple):
    absolute: torch.Tensor | None  # (1, h, w, C)
    relative: list[tuple[torch.Tensor, torch.Tensor] | None]  # per block: (h,h,d), (w,w,d)


class DITImageEncoder(ImageEncoderViT):
    """SAM ViT + DIT text injection. ``forward(image, text) -> image embedding``."""

    def __init__(self, config: DITConfig) -> None:
        enc = config.encoder
        super().__init__(
            img_size=enc.build_size,
            patch_size=enc.patch_size,
            embed_dim=enc.embed_dim,
            depth=enc.depth,
            num_heads=enc.num_heads,
            mlp_ratio=enc.mlp_ratio,
            out_chans=enc.out_chans,
            qkv_bias=enc.qkv_bias,
            norm_layer=partial(nn.LayerNorm, eps=enc.layer_norm_eps),
            use_rel_pos=enc.use_rel_pos,
            window_size=enc.window_size,
            global_attn_indexes=tuple(enc.global_attn_indexes),
        )
        self.variant = config.variant
        self.use_sdpa = True
        #: recompute each block in the backward instead of keeping its activations (training)
        self.checkpoint_blocks = False
        self.prob_text = (
            nn.Linear(config.text_encoder.hidden_size, enc.embed_dim)
            if config.projects_text
            else None
        )
        self.probs = nn.ModuleList(
            nn.Linear(enc.embed_dim, enc.embed_dim) for _ in range(enc.depth)
        )
        for prob in self.probs:  # zero init: training starts from SAM's behaviour
            nn.init.zeros_(prob.weight)
            nn.init.zeros_(prob.bias)
        self.text_dropout = nn.Dropout(config.text_dropout)

    def _block(
        self,
        i: int,
        source: torch.Tensor,
        visual: torch.Tensor,
        rel: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """Block i over [probs[i](source); visual] -> (B, L + h*w, C) tokens."""
        block = self.blocks[i]
        # concatenation, not slot assignment: no in-place writes (no ScatterND in ONNX)
        tokens = torch.cat([self.text_dropout(self.probs[i](source)), visual], dim=1)
        tokens = tokens + text_visual_attention(
            block.attn, block.norm1(tokens), source.shape[1], rel, self.use_sdpa
        )
        return tokens + block.mlp(block.norm2(tokens))

    def position_tables(self, h: int, w: int) -> PositionTables:
        """Absolute (1, h, w, C) and per-block relative tables resized for an h x w grid."""
        pos = resize_abs_pos(self.pos_embed, h, w) if self.pos_embed is not None else None
        rel = [rel_pos_tables(b.attn, h, w) if b.attn.use_rel_pos else None for b in self.blocks]
        return PositionTables(pos, rel)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """(B, 3, H, W) image + (B, L, text_width) features -> (B, out_chans, H/16, W/16)."""
        p = self.patch_embed.proj
        h, w = image.shape[-2] // p.stride[0], image.shape[-1] // p.stride[1]
        return self.forward_with_tables(image, text, self.position_tables(h, w))

    def forward_with_tables(
        self, image: torch.Tensor, text: torch.Tensor, tables: PositionTables
    ) -> torch.Tensor:
        """The forward with the size-dependent tables given (export folds them to constants)."""
        # channels-first until the tokens are formed: one layout change, not two (OpenVINO
        # reordered the NHWC sum back to its own layout: 3 ms of a ViT-B INT8 call)
        x = self.patch_embed.proj(image)  # (B, C, h, w)
        b, c, h, w = x.shape
        if tables.absolute is not None:
            x = x + tables.absolute.permute(0, 3, 1, 2)
        visual = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
        if self.prob_text is not None:
            text = self.prob_text(text)
        num_text = text.shape[1]
        slots = text
        for i in range(len(self.blocks)):
            # layer-wise: always from the original text; end-to-end: from the current slots
            source = text if self.variant == "layer_wise" else slots
            if self.checkpoint_blocks and torch.is_grad_enabled():
                tokens = checkpoint(
                    self._block, i, source, visual, tables.relative[i], use_reentrant=False
                )
            else:
                tokens = self._block(i, source, visual, tables.relative[i])
            slots, visual = tokens[:, :num_text], tokens[:, num_text:]
        return self.neck(visual.reshape(b, h, w, c).permute(0, 3, 1, 2))
