"""Deformable-DETR's decoder, with group-batched query recollection.

Numerics follow the SQR recipe's mmdet 2.12 / mmcv 1.3 Deformable-DETR
(``mmdet/models/utils/transformer.py`` of Fangyi-Chen/SQR at b576a6e), rewritten batch-first from
typed layers: post-norm layers, references scaled by each level's valid ratio, refinement
``sigmoid(delta + logit(reference))`` with the new references detached before the next layer.
The encoder is :mod:`sqr.modeling.encoders.deformable`, the two-stage proposals
:mod:`sqr.modeling.query_selection`.

The decoder runs any :class:`~sqr.modeling.sqr.RecollectionSchedule`: the groups a stage
decodes sit side by side on the query axis against the encoder memory, whose value projection
each layer computes once for all of them; only self-attention separates the groups. Without box
refinement every group shares the static initial references, which are broadcast, never
repeated; with refinement (and in two-stage) every group carries its own references.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sqr.layers.box_ops import refine_boxes
from sqr.layers.mlp import FFN
from sqr.layers.ms_deform_attn import MultiScaleDeformableAttention, add_to_groups
from sqr.modeling.sqr import DecodedStage, LayerCall, RecollectionSchedule, stack_groups

from .base import RecollectingDecoder


class DeformableDecoderLayer(nn.Module):
    """Post-norm self-attention (within each query group), deformable cross-attention, FFN.

    Self-attention is mmcv's ``MultiheadAttention`` with ``dropout`` on the attention weights and
    on its output; position enters query and key, not value or residual.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_levels: int,
        num_points: int,
        feedforward_dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(
            embed_dim, num_heads, dropout=dropout, batch_first=True
        )
        self.dropout = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.cross_attn = MultiScaleDeformableAttention(
            embed_dim, num_heads, num_levels, num_points, dropout
        )
        self.norm2 = nn.LayerNorm(embed_dim)
        self.ffn = FFN(embed_dim, feedforward_dim, dropout, "relu")
        self.norm3 = nn.LayerNorm(embed_dim)

    def forward(
        self,
        content: torch.Tensor,
        query_pos: torch.Tensor,
        reference_points: torch.Tensor,
        value_maps: Sequence[torch.Tensor],
        num_groups: int,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            content: Tensor[B, G*Q, C], G groups of Q queries.
            query_pos: Tensor[B, Q, C], shared by the groups, or Tensor[B, G*Q, C].
            reference_points: Tensor[B, Q or G*Q, L, 2|4] scaled by the valid ratios.
            value_maps: the cross-attention's projected memory.
            num_groups: G; queries attend to each other only within their group.
            attn_mask: Bool[Q, Q], True where query i may not attend to query j, the same in
                every group (DINO's denoising groups); None lets every query see its group.

        Returns:
            Tensor[B, G*Q, C].
        """
        batch, length, channels = content.shape
        q = add_to_groups(content, query_pos)

        def grouped(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch * num_groups, length // num_groups, channels)

        attended = self.self_attn(
            grouped(q), grouped(q), grouped(content), need_weights=False, attn_mask=attn_mask
        )[0]
        x = self.norm1(content + self.dropout(attended.reshape(batch, length, channels)))
        x = self.norm2(self.cross_attn(x, value_maps, reference_points, query_pos))
        return self.norm3(x + self.ffn(x))


@dataclass(frozen=True)
class DeformableInputs:
    """What the stages of one forward pass read besides the queries.

    Attributes:
        memory: Tensor[B, S, C] encoder output.
        padding_mask: Bool[B, S], True on padding.
        spatial_shapes: (H_l, W_l) per level.
        ratios: Tensor[B, L, 2] valid ratios (w, h).
        bbox_embed: the detector's per-stage box heads when references are refined stage by
            stage, else None (every stage then samples around the initial references).
        query_pos: Tensor[B, Q, C], the query position embedding of every stage, or None where
            the decoder derives it from the references (DINO).
        reference: Tensor[B, Q, D], the initial references.
    """

    memory: torch.Tensor
    padding_mask: torch.Tensor
    spatial_shapes: Sequence[tuple[int, int]]
    ratios: torch.Tensor
    bbox_embed: nn.ModuleList | None
    query_pos: torch.Tensor | None
    reference: torch.Tensor


class DeformableDetrDecoder(RecollectingDecoder):
    """Deformable-DETR decoder; with box heads given, references are refined stage by stage
    (without a graph: the next stage detaches them anyway) and detached between stages; without,
    every group samples around the static initial references, broadcast over the groups.

    Args:
        num_stages: decoder layers (stages).
        embed_dim: channels.
        num_heads: attention heads.
        num_levels: feature levels.
        num_points: samples per head and level.
        feedforward_dim: FFN hidden channels.
        dropout: dropout in self-attention, cross-attention output and FFN.
        inverse_sigmoid_eps: clamp of the logit used to refine references (mmdet: 1e-5).
        checkpoint_recollected: see :class:`~sqr.modeling.decoders.base.RecollectingDecoder`.
    """

    def __init__(
        self,
        num_stages: int = 6,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        feedforward_dim: int = 1024,
        dropout: float = 0.1,
        inverse_sigmoid_eps: float = 1e-5,
        checkpoint_recollected: bool = False,
    ) -> None:
        super().__init__(
            (
                DeformableDecoderLayer(
                    embed_dim, num_heads, num_levels, num_points, feedforward_dim, dropout
                )
                for _ in range(num_stages)
            ),
            checkpoint_recollected,
        )
        self.num_levels = num_levels
        self.eps = inverse_sigmoid_eps

    def forward(
        self,
        content: torch.Tensor,
        query_pos: torch.Tensor,
        reference: torch.Tensor,
        memory: torch.Tensor,
        padding_mask: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        ratios: torch.Tensor,
        bbox_embed: nn.ModuleList | None,
        schedule: RecollectionSchedule,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode every group the schedule asks for.

        Args:
            content: Tensor[B, Q, C] initial query content.
            query_pos: Tensor[B, Q, C] query position embedding (the same in every layer).
            reference: Tensor[B, Q, 2] initial points or Tensor[B, Q, 4] boxes (sigmoid space).
            memory, padding_mask, spatial_shapes, ratios, bbox_embed: see
                :class:`DeformableInputs`.
            schedule: which groups each stage decodes.

        Returns:
            hidden Tensor[G_total, B, Q, C]: every output group;
            references: each group's input references (sigmoid space), attached to the graph
            where the baseline keeps them attached. Without refinement Tensor[G_total, B, Q, D],
            an expanded view of ``reference``; with refinement Tensor[G_total, B, Q, 4], points
            padded with w = h = 0.5, whose logit is exactly 0 (so :func:`refine_boxes` gives the
            point rule).
        """
        self._check_box_heads(bbox_embed)
        inputs = DeformableInputs(
            memory, padding_mask, spatial_shapes, ratios, bbox_embed, query_pos, reference
        )
        stages = self.run_schedule(schedule, content, reference, inputs)
        hidden = stack_groups([stage.output for stage in stages], content.shape[1])
        if bbox_embed is None:
            return hidden, reference.expand(hidden.shape[0], *reference.shape)
        # mmdet predicts from the references as the layers got them: detached after the first.
        used = [r for stage in stages for r in stage.group_references(inputs=True)]
        padded = [F.pad(r, (0, 2), value=0.5) if r.shape[-1] == 2 else r for r in used]
        return hidden, torch.stack(padded)

    def decode_stage(
        self,
        stage: int,
        content: torch.Tensor,
        reference: torch.Tensor,
        value_maps: Sequence[torch.Tensor],
        inputs: DeformableInputs,
        num_groups: int,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run layer ``stage`` on ``num_groups`` groups side by side.

        Args:
            stage: layer index.
            content: Tensor[B, G*Q, C].
            reference: Tensor[B, Q, D] shared by the groups, or Tensor[B, G*Q, D]; D = 2 (points)
                or 4 (boxes), sigmoid space, all groups of one kind.
            value_maps: the layer's projected memory (``cross_attn.project_value``).
            inputs: the forward pass's record.
            num_groups: G.
            attn_mask: Bool[Q, Q] self-attention mask of each group, or None.

        Returns:
            Tensor[B, G*Q, C] layer output.
        """
        ratios = inputs.ratios
        scale = ratios if reference.shape[-1] == 2 else torch.cat([ratios, ratios], -1)
        reference_points = reference[:, :, None] * scale[:, None]
        query_pos = self.query_position(reference_points, inputs)
        return self.layers[stage](
            content, query_pos, reference_points, value_maps, num_groups, attn_mask
        )

    def query_position(
        self, reference_points: torch.Tensor, inputs: DeformableInputs
    ) -> torch.Tensor:
        """The position embedding a stage adds to its queries: Deformable-DETR's is learnt and
        the same in every stage."""
        return inputs.query_pos

    def stage_call(self, stage: int, inputs: DeformableInputs) -> LayerCall:
        value_maps = self.layers[stage].cross_attn.project_value(
            inputs.memory, inputs.spatial_shapes, inputs.padding_mask
        )

        def call(content: torch.Tensor, reference: torch.Tensor, num_groups: int):
            if inputs.bbox_embed is None:
                reference = inputs.reference
            return self.decode_stage(stage, content, reference, value_maps, inputs, num_groups)

        return call

    def refine_references(
        self, stage: int, decoded: DecodedStage, inputs: DeformableInputs
    ) -> list[torch.Tensor]:
        sizes = decoded.group_sizes
        if inputs.bbox_embed is None:
            return [inputs.reference] * len(sizes)
        outputs = decoded.output.split(sizes, dim=1)
        references = decoded.group_references(inputs=True)
        with torch.no_grad():
            return [
                refine_boxes(inputs.bbox_embed[stage](o), r, self.eps)
                for o, r in zip(outputs, references, strict=True)
            ]

    def detaches_references(self, inputs: DeformableInputs) -> bool:
        return inputs.bbox_embed is not None

    def _check_box_heads(self, bbox_embed: nn.ModuleList | None) -> None:
        if bbox_embed is not None and len(bbox_embed) < self.num_stages:
            raise ValueError(f"{len(bbox_embed)} box heads for {self.num_stages} decoder stages")
