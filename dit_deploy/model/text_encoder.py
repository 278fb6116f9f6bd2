"""The text branch: a BERT-family encoder from ``transformers``, cut after the layer DIT uses.

The authors' wrapper returns the output of BERT's FIRST encoder layer and computes
(then discards) the other eleven. We build only ``feature_layer`` layers, so the
deployed text encoder is the embeddings plus one layer. Parameter names are BERT's
(``embeddings.*``, ``encoder.layer.{i}.*``), the same as in the authors' checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import TextEncoderConfig


def bert_config(config: TextEncoderConfig):  # -> transformers.BertConfig
    """The ``transformers`` config of the truncated encoder (``feature_layer`` layers)."""
    from transformers import BertConfig

    bert = BertConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.feature_layer,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size,
        layer_norm_eps=config.layer_norm_eps,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    # eager attention: exact, and traces to plain ONNX ops
    bert._attn_implementation = "eager"
    return bert


class TextEncoder(nn.Module):
    """(B, L) ids + (B, L) mask -> (B, L, hidden) features of layer ``feature_layer``."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        from transformers import BertModel

        self.config = config
        self.bert = BertModel(bert_config(config), add_pooling_layer=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        )
        return out.last_hidden_state
