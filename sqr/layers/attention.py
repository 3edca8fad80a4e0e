"""Conditional attention (Conditional-DETR, as DAB-DETR uses it), batch-first.

Self-attention takes ``num_groups``: query groups sit side by side on the query axis
``[B, G*Q, C]`` and attention is restricted to each group by reshaping to ``[B*G, Q, C]``, so
recollected groups never see each other (SQR) without any copy of the input.

Cross-attention is split in two: :meth:`ConditionalCrossAttention.project_memory` projects the
encoder memory into keys and values once per layer, and ``forward`` attends any number of
queries to them. Groups therefore share the memory-side work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, N, C] -> [B, heads, N, C / heads]."""
    batch, length, channels = x.shape
    return x.view(batch, length, num_heads, channels // num_heads).transpose(1, 2)


class ConditionalSelfAttention(nn.Module):
    """Self-attention with separate content and position projections.

    ``q = Wqc x + Wqp p``, ``k = Wkc x + Wkp p``, ``v = Wv x``; multi-head attention; output
    projection; residual.

    Args:
        embed_dim: channels.
        num_heads: attention heads.
        dropout: dropout on the attention weights and on the output.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.query_content_proj = nn.Linear(embed_dim, embed_dim)
        self.query_pos_proj = nn.Linear(embed_dim, embed_dim)
        self.key_content_proj = nn.Linear(embed_dim, embed_dim)
        self.key_pos_proj = nn.Linear(embed_dim, embed_dim)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.num_heads = num_heads
        self.dropout = dropout
        self.proj_drop = nn.Dropout(dropout)

    def forward(
        self, query: torch.Tensor, query_pos: torch.Tensor, num_groups: int = 1
    ) -> torch.Tensor:
        """
        Args:
            query: Tensor[B, G*Q, C] content of G groups of Q queries.
            query_pos: Tensor[B, G*Q, C] position embedding of the same queries.
            num_groups: G; queries attend only within their group.

        Returns:
            Tensor[B, G*Q, C], the input plus the attention output.
        """
        batch, length, channels = query.shape

        def grouped(x: torch.Tensor) -> torch.Tensor:
            return _heads(
                x.reshape(batch * num_groups, length // num_groups, channels), self.num_heads
            )

        q = grouped(self.query_content_proj(query) + self.query_pos_proj(query_pos))
        k = grouped(self.key_content_proj(query) + self.key_pos_proj(query_pos))
        v = grouped(self.value_proj(query))
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(batch, length, channels)
        return query + self.proj_drop(self.out_proj(out))


class ConditionalCrossAttention(nn.Module):
    """Cross-attention whose per-head query is ``[content ‖ spatial]`` (Conditional-DETR).

    Per head, ``q = [Wqc x (+ Wqp p in the first layer) ‖ Wqs s]`` and
    ``k = [Wkc m (+ Wkp pos in the first layer) ‖ Wkp pos]``, ``v = Wv m``; the q·k width is
    twice the head width, hence the scale ``1 / sqrt(2 C / heads)``.

    Args:
        embed_dim: channels.
        num_heads: attention heads.
        dropout: dropout on the attention weights and on the output.
        first_layer: whether this is the decoder's first layer, which alone adds the
            positional terms to the content query and key (and owns ``query_pos_proj``).
    """

    def __init__(
        self, embed_dim: int, num_heads: int, dropout: float = 0.0, first_layer: bool = False
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.query_content_proj = nn.Linear(embed_dim, embed_dim)
        self.query_pos_proj = nn.Linear(embed_dim, embed_dim) if first_layer else None
        self.query_pos_sine_proj = nn.Linear(embed_dim, embed_dim)
        self.key_content_proj = nn.Linear(embed_dim, embed_dim)
        self.key_pos_proj = nn.Linear(embed_dim, embed_dim)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.num_heads = num_heads
        self.first_layer = first_layer
        self.dropout = dropout
        self.proj_drop = nn.Dropout(dropout)

    def project_memory(
        self, memory: torch.Tensor, memory_pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the encoder memory, shared by every query group.

        Args:
            memory: Tensor[B, HW, C].
            memory_pos: Tensor[B, HW, C] position embedding of the memory.

        Returns:
            keys Tensor[B, heads, HW, 2C/heads] and values Tensor[B, heads, HW, C/heads].
        """
        key_content = self.key_content_proj(memory)
        key_pos = self.key_pos_proj(memory_pos)
        if self.first_layer:
            key_content = key_content + key_pos
        keys = torch.cat([_heads(key_content, self.num_heads), _heads(key_pos, self.num_heads)], -1)
        return keys, _heads(self.value_proj(memory), self.num_heads)

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        query_sine_embed: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            query: Tensor[B, N, C] content queries (any number of groups on N).
            query_pos: Tensor[B, N, C] (used by the first layer only).
            query_sine_embed: Tensor[B, N, C] modulated sine embedding of the reference boxes.
            keys, values: from :meth:`project_memory`.

        Returns:
            Tensor[B, N, C], the input plus the attention output.
        """
        content = self.query_content_proj(query)
        if self.query_pos_proj is not None:
            content = content + self.query_pos_proj(query_pos)
        sine = self.query_pos_sine_proj(query_sine_embed)
        q = torch.cat([_heads(content, self.num_heads), _heads(sine, self.num_heads)], -1)
        out = F.scaled_dot_product_attention(
            q, keys, values, dropout_p=self.dropout if self.training else 0.0
        )
        out = out.transpose(1, 2).flatten(2)
        return query + self.proj_drop(self.out_proj(out))
