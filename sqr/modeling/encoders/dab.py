"""DAB-DETR's encoder: conditional self-attention layers over the flattened last feature map.

Numerics follow detrex's DAB-DETR (``projects/dab_detr/modeling/dab_transformer.py`` at
e244e6c), rewritten batch-first from typed layers.
"""

from __future__ import annotations

import torch
from torch import nn

from sqr.layers.mlp import FFN, MLP


class DabEncoderLayer(nn.Module):
    """Post-norm self-attention + FFN; position enters query and key, not value."""

    def __init__(
        self, embed_dim: int, num_heads: int, feedforward_dim: int, dropout: float, activation: str
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(
            embed_dim, num_heads, dropout=dropout, batch_first=True
        )
        self.dropout = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.ffn = FFN(embed_dim, feedforward_dim, dropout, activation)
        self.norm2 = nn.LayerNorm(embed_dim)

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, padding_mask: torch.Tensor
    ) -> torch.Tensor:
        q = k = x + pos
        attended = self.self_attn(q, k, x, key_padding_mask=padding_mask, need_weights=False)[0]
        x = self.norm1(x + self.dropout(attended))
        return self.norm2(x + self.ffn(x))


class DabDetrEncoder(nn.Module):
    """Conditional encoder: each layer's position embedding is scaled by an MLP of the content.

    Args:
        num_layers: encoder layers.
        embed_dim: channels.
        num_heads: attention heads.
        feedforward_dim: FFN hidden channels.
        dropout: dropout in attention and FFN (0 in the reference recipe).
        activation: FFN activation ("prelu" in DAB-DETR).
    """

    def __init__(
        self,
        num_layers: int = 6,
        embed_dim: int = 256,
        num_heads: int = 8,
        feedforward_dim: int = 2048,
        dropout: float = 0.0,
        activation: str = "prelu",
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DabEncoderLayer(embed_dim, num_heads, feedforward_dim, dropout, activation)
            for _ in range(num_layers)
        )
        self.query_scale = MLP(embed_dim, embed_dim, embed_dim, 2)

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, padding_mask: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            x: Tensor[B, HW, C] flattened features.
            pos: Tensor[B, HW, C] their position embedding.
            padding_mask: Bool[B, HW], True on padding.

        Returns:
            Tensor[B, HW, C] memory.
        """
        for layer in self.layers:
            x = layer(x, pos * self.query_scale(x), padding_mask)
        return x
