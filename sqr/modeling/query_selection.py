"""Queries chosen from the encoder's output: two-stage Deformable-DETR's and DINO's.

Both make every encoder token propose a box around itself (:func:`token_proposals`), score the
proposals with the detector's encoder heads, and start the decoder from the top-scoring ones
(:class:`EncoderQuerySelection`). They differ only in how a proposal is scored and where the
query content comes from: two-stage Deformable-DETR scores by class 0 and embeds the chosen
boxes (:class:`TwoStageProposals`); DINO scores by the best class and learns the content
(:class:`MixedQuerySelection`). See ``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from sqr.layers.position_encoding import sine_embedding


def token_proposals(
    memory: torch.Tensor, padding_mask: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-stage proposals: a box per encoder token (its centre, side ``0.05 * 2**level`` of the
    valid image).

    Args:
        memory: Tensor[B, S, C] encoder output.
        padding_mask: Bool[B, S], True on padding.
        spatial_shapes: (H_l, W_l) per level.

    Returns:
        ``(memory, proposals)``: the memory zeroed where a token proposes nothing (padding, or
        a box too close to the border), Tensor[B, S, C]; the boxes in logit space, +inf there,
        Tensor[B, S, 4] (cx, cy, w, h).
    """
    batch = memory.shape[0]
    proposals, start = [], 0
    for level, (height, width) in enumerate(spatial_shapes):
        mask = padding_mask[:, start : start + height * width].view(batch, height, width)
        valid_h = (~mask[:, :, 0]).sum(1)
        valid_w = (~mask[:, 0, :]).sum(1)
        ys, xs = torch.meshgrid(
            torch.arange(height, dtype=torch.float32, device=memory.device),
            torch.arange(width, dtype=torch.float32, device=memory.device),
            indexing="ij",
        )
        grid = torch.stack([xs, ys], -1)  # [H, W, 2]
        scale = torch.stack([valid_w, valid_h], -1).view(batch, 1, 1, 2)
        grid = (grid.unsqueeze(0).expand(batch, -1, -1, -1) + 0.5) / scale
        size = torch.full_like(grid, 0.05 * 2.0**level)
        proposals.append(torch.cat((grid, size), -1).view(batch, -1, 4))
        start += height * width
    proposals = torch.cat(proposals, 1)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
    proposals = torch.log(proposals / (1 - proposals))
    invalid = padding_mask.unsqueeze(-1) | ~valid
    proposals = proposals.masked_fill(invalid, float("inf"))
    return memory.masked_fill(invalid, 0.0), proposals


class ScoredProposals(NamedTuple):
    """Every encoder token's proposal and the ones chosen for the decoder.

    Attributes:
        logits: Tensor[B, S, K] class logits of every token.
        coords: Tensor[B, S, 4] boxes in logit space (cx, cy, w, h), +inf where the token
            proposes nothing.
        top: int64 Tensor[B, Q], the chosen tokens, best first.
        memory: Tensor[B, S, C], the projected tokens the heads read (RT-DETR's query content).
    """

    logits: torch.Tensor
    coords: torch.Tensor
    top: torch.Tensor
    memory: torch.Tensor

    def chosen(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, S, D] at the chosen tokens: Tensor[B, Q, D]."""
        return torch.gather(x, 1, self.top[..., None].expand(-1, -1, x.shape[-1]))


class EncoderQuerySelection(nn.Module):
    """The shared part: project the proposing tokens, score them with the detector's encoder
    heads and choose the ``num_queries`` best. A subclass says how a token is scored
    (:meth:`score`) and builds the decoder's queries from the choice.

    Args:
        embed_dim: channels.
    """

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.enc_output = nn.Linear(embed_dim, embed_dim)
        self.enc_output_norm = nn.LayerNorm(embed_dim)

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """Tensor[B, S] ranking score of each token from its logits [B, S, K]."""
        raise NotImplementedError

    def propose(
        self,
        memory: torch.Tensor,
        padding_mask: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        class_head: nn.Module,
        box_head: nn.Module,
        num_queries: int,
    ) -> ScoredProposals:
        """
        Args:
            memory: Tensor[B, S, C] encoder output.
            padding_mask: Bool[B, S], True on padding.
            spatial_shapes: (H_l, W_l) per level.
            class_head: maps [.., C] to class logits [.., K] (the detector's encoder head).
            box_head: maps [.., C] to box deltas [.., 4] in logit space.
            num_queries: tokens chosen.
        """
        if num_queries > memory.shape[1]:
            raise ValueError(
                f"query selection needs at least {num_queries} encoder tokens, got "
                f"{memory.shape[1]}"
            )
        output_memory, proposals = token_proposals(memory, padding_mask, spatial_shapes)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        logits = class_head(output_memory)
        coords = box_head(output_memory) + proposals  # logit space; +inf where invalid
        top = self.score(logits).topk(num_queries, dim=1)[1]
        return ScoredProposals(logits, coords, top, output_memory)


class TwoStageProposals(EncoderQuerySelection):
    """Two-stage Deformable-DETR: the tokens scoring highest on class 0 give the decoder its
    initial boxes (detached) and, through a sine embedding of those boxes, its queries.

    Args:
        embed_dim: channels.
        temperature: frequency base of the boxes' sine embedding.
    """

    def __init__(self, embed_dim: int = 256, temperature: float = 10000) -> None:
        super().__init__(embed_dim)
        self.pos_trans = nn.Linear(2 * embed_dim, 2 * embed_dim)
        self.pos_trans_norm = nn.LayerNorm(2 * embed_dim)
        self.embed_dim = embed_dim
        self.temperature = temperature

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[..., 0]

    def forward(
        self,
        memory: torch.Tensor,
        padding_mask: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        class_head: nn.Module,
        box_head: nn.Module,
        num_proposals: int,
    ) -> tuple[torch.Tensor, ...]:
        """
        Args:
            memory, padding_mask, spatial_shapes, class_head, box_head: see :meth:`propose`.
            num_proposals: proposals kept (the decoder's queries).

        Returns:
            ``(logits, boxes, content, query_pos, reference)``: every token's class logits
            Tensor[B, S, K] and box Tensor[B, S, 4] (normalised cxcywh; 1 where the token is
            padding or too close to the border), the decoder's initial content and position
            Tensor[B, Q, C] and its reference boxes Tensor[B, Q, 4] (sigmoid space, detached).
        """
        scored = self.propose(
            memory, padding_mask, spatial_shapes, class_head, box_head, num_proposals
        )
        top_coords = scored.chosen(scored.coords).detach()
        embedded = self.pos_trans_norm(self.pos_trans(self._sine(top_coords)))
        query_pos, content = embedded.split(self.embed_dim, dim=-1)
        return scored.logits, scored.coords.sigmoid(), content, query_pos, top_coords.sigmoid()

    def _sine(self, coords: torch.Tensor) -> torch.Tensor:
        """[B, Q, 4] logit-space boxes -> [B, Q, 4 * C / 2]: per coordinate (x, y, w, h in
        that order) C / 2 interleaved sin/cos features of ``2 pi sigmoid(coord)``."""
        return sine_embedding(
            coords.sigmoid() * (2 * math.pi), self.embed_dim // 2, self.temperature
        )


class MixedQuerySelection(EncoderQuerySelection):
    """DINO's queries: reference boxes from the encoder proposals whose best class scores
    highest, content a learnt embedding, the same for every image.

    Args:
        embed_dim: channels.
        num_queries: queries selected (and learnt content vectors).
    """

    def __init__(self, embed_dim: int = 256, num_queries: int = 900) -> None:
        super().__init__(embed_dim)
        self.content = nn.Embedding(num_queries, embed_dim)

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.max(-1)[0]

    def forward(
        self,
        memory: torch.Tensor,
        padding_mask: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        class_head: nn.Module,
        box_head: nn.Module,
    ) -> tuple[torch.Tensor, ...]:
        """
        Args:
            memory, padding_mask, spatial_shapes, class_head, box_head: see :meth:`propose`.

        Returns:
            ``(logits, boxes, content, reference)``: the selected proposals' class logits
            Tensor[B, Q, K] and boxes Tensor[B, Q, 4] (normalised cxcywh, attached: the encoder
            loss trains them), the decoder's initial content Tensor[B, Q, C] and its reference
            boxes Tensor[B, Q, 4] (the same boxes, detached).
        """
        num_queries = self.content.num_embeddings
        scored = self.propose(
            memory, padding_mask, spatial_shapes, class_head, box_head, num_queries
        )
        top_coords = scored.chosen(scored.coords)
        content = self.content.weight[None].expand(memory.shape[0], -1, -1)
        return (
            scored.chosen(scored.logits),
            top_coords.sigmoid(),
            content,
            top_coords.detach().sigmoid(),
        )
