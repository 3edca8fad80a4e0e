"""DAB-DETR's decoder, with group-batched query recollection.

Numerics follow detrex's DAB-DETR (``projects/dab_detr/modeling/dab_transformer.py`` at
e244e6c), rewritten batch-first from typed layers. The decoder runs any
:class:`~sqr.modeling.sqr.RecollectionSchedule`: the groups a stage decodes sit side by
side on the query axis against the unrepeated encoder memory; only self-attention separates them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from sqr.layers.attention import ConditionalCrossAttention, ConditionalSelfAttention
from sqr.layers.box_ops import refine_boxes
from sqr.layers.mlp import FFN, MLP
from sqr.layers.position_encoding import sine_box_embedding
from sqr.modeling.sqr import DecodedStage, LayerCall, RecollectionSchedule, stack_groups

from .base import RecollectingDecoder


class DabDecoderLayer(nn.Module):
    """Post-norm conditional self-attention, conditional cross-attention and FFN."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        feedforward_dim: int,
        dropout: float,
        activation: str,
        first_layer: bool,
    ) -> None:
        super().__init__()
        self.self_attn = ConditionalSelfAttention(embed_dim, num_heads, dropout)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.cross_attn = ConditionalCrossAttention(embed_dim, num_heads, dropout, first_layer)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.ffn = FFN(embed_dim, feedforward_dim, dropout, activation)
        self.norm3 = nn.LayerNorm(embed_dim)

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        query_sine_embed: torch.Tensor,
        memory_kv: tuple[torch.Tensor, torch.Tensor],
        num_groups: int,
    ) -> torch.Tensor:
        x = self.norm1(self.self_attn(query, query_pos, num_groups))
        x = self.norm2(self.cross_attn(x, query_pos, query_sine_embed, *memory_kv))
        return self.norm3(x + self.ffn(x))


class DabInputs(NamedTuple):
    """What the stages of one forward pass read besides the queries.

    Attributes:
        memory: Tensor[B, HW, C] encoder output.
        memory_pos: Tensor[B, HW, C] its position embedding.
        bbox_embed: the detector's box head, shared by the stages.
    """

    memory: torch.Tensor
    memory_pos: torch.Tensor
    bbox_embed: nn.Module


class DabDetrDecoder(RecollectingDecoder):
    """DAB-DETR decoder: anchor boxes refined layer by layer (detached between layers, each
    stage's output refining them with the shared box head), queried by their sine embedding.

    Args:
        num_stages: decoder layers (stages).
        embed_dim: channels.
        num_heads: attention heads.
        feedforward_dim: FFN hidden channels.
        dropout: dropout in attention and FFN (0 in the reference recipe).
        activation: FFN activation ("prelu" in DAB-DETR).
        inverse_sigmoid_eps: clamp of the logit used to refine boxes (detrex: 1e-3).
        checkpoint_recollected: see :class:`~sqr.modeling.decoders.base.RecollectingDecoder`.
    """

    def __init__(
        self,
        num_stages: int = 6,
        embed_dim: int = 256,
        num_heads: int = 8,
        feedforward_dim: int = 2048,
        dropout: float = 0.0,
        activation: str = "prelu",
        inverse_sigmoid_eps: float = 1e-3,
        checkpoint_recollected: bool = False,
    ) -> None:
        super().__init__(
            (
                DabDecoderLayer(embed_dim, num_heads, feedforward_dim, dropout, activation, i == 0)
                for i in range(num_stages)
            ),
            checkpoint_recollected,
        )
        self.query_scale = MLP(embed_dim, embed_dim, embed_dim, 2)
        self.ref_point_head = MLP(2 * embed_dim, embed_dim, embed_dim, 2)
        self.ref_anchor_head = MLP(embed_dim, embed_dim, 2, 2)
        self.norm = nn.LayerNorm(embed_dim)
        self.embed_dim = embed_dim
        self.eps = inverse_sigmoid_eps

    def decode_stage(
        self,
        stage: int,
        content: torch.Tensor,
        reference: torch.Tensor,
        memory_kv: tuple[torch.Tensor, torch.Tensor],
        num_groups: int,
    ) -> torch.Tensor:
        """Run layer ``stage`` on ``num_groups`` groups side by side.

        Args:
            stage: layer index.
            content: Tensor[B, G*Q, C] query content.
            reference: Tensor[B, G*Q, 4] reference boxes (sigmoid space, cx cy w h).
            memory_kv: the layer's projected memory (``cross_attn.project_memory``).
            num_groups: G.

        Returns:
            Tensor[B, G*Q, C] layer output (before the final norm).
        """
        half = self.embed_dim // 2
        sine = sine_box_embedding(reference, num_feats=half)  # [y, x, w, h] blocks
        query_pos = self.ref_point_head(sine)
        sine_xy = sine[..., : self.embed_dim]
        if stage > 0:  # the first layer's content is all zeros: no content-conditioned scale
            sine_xy = sine_xy * self.query_scale(content)
        # Modulate the y/x attention width by the box height/width (DAB-DETR eq. 6).
        hw = self.ref_anchor_head(content).sigmoid()
        sine_xy = torch.cat(
            [
                sine_xy[..., :half] * (hw[..., 1] / reference[..., 3]).unsqueeze(-1),
                sine_xy[..., half:] * (hw[..., 0] / reference[..., 2]).unsqueeze(-1),
            ],
            dim=-1,
        )
        return self.layers[stage](content, query_pos, sine_xy, memory_kv, num_groups)

    def forward(
        self,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        anchors: torch.Tensor,
        bbox_embed: nn.Module,
        schedule: RecollectionSchedule,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode every group the schedule asks for.

        Args:
            memory: Tensor[B, HW, C] encoder output.
            memory_pos: Tensor[B, HW, C] its position embedding.
            anchors: Tensor[Q, 4] learnable anchor boxes in logit space.
            bbox_embed: the shared box head (predicts logit-space offsets).
            schedule: which groups each stage decodes.

        Returns:
            hidden Tensor[G_total, B, Q, C]: each output group after the final norm;
            references Tensor[G_total, B, Q, 4]: each group's input reference boxes (sigmoid
            space), attached to the graph where the baseline keeps them attached.
        """
        batch, num_queries = memory.shape[0], anchors.shape[0]
        # The initial group: zero content, the anchors as boxes (attached, so that they learn).
        content = memory.new_zeros(batch, num_queries, self.embed_dim)
        reference = anchors.sigmoid().unsqueeze(0).expand(batch, -1, -1)
        inputs = DabInputs(memory, memory_pos, bbox_embed)
        stages = self.run_schedule(schedule, content, reference, inputs)
        hidden = [self.norm(stage.output) for stage in stages]
        used_references = [r for stage in stages for r in stage.references]
        return stack_groups(hidden, num_queries), stack_groups(used_references, num_queries)

    def stage_call(self, stage: int, inputs: DabInputs) -> LayerCall:
        memory_kv = self.layers[stage].cross_attn.project_memory(inputs.memory, inputs.memory_pos)
        return lambda content, reference, num_groups: self.decode_stage(
            stage, content, reference, memory_kv, num_groups
        )

    def refine_references(
        self, stage: int, decoded: DecodedStage, inputs: DabInputs
    ) -> list[torch.Tensor]:
        (reference,) = decoded.inputs  # the groups of a stage are all of one kind
        boxes = refine_boxes(inputs.bbox_embed(decoded.output), reference, self.eps)
        return list(boxes.split(decoded.group_sizes, dim=1))
