"""RT-DETRv2's decoder, with group-batched query recollection.

Numerics follow lyuwenyu/RT-DETR ``rtdetrv2_pytorch/src/zoo/rtdetr/rtdetrv2_decoder.py`` at
068dfde, rewritten batch-first on this package's layers:

* Cross-attention is RT-DETRv2's deformable attention
  (:class:`~sqr.layers.ms_deform_attn_v2.DeformableAttentionV2`: points per level, ``"default"``
  or ``"discrete"`` sampling). Every level samples around the same box: RT-DETR has no padding
  mask and no valid ratios (its batches are resized to one size).
* Layers are Deformable-DETR's post-norm ones (self-attention within each query group,
  cross-attention, ReLU FFN); each stage's query position is ``query_pos_head`` (a 2-layer MLP)
  of its detached reference boxes. There is no norm after the last layer.
* Look forward twice, as DINO (:mod:`sqr.modeling.decoders.dino`): a stage refines the
  references it got with its box head, keeping the graph, and the boxes of a group are
  predicted from the references the stage that produced it refined.
* ``eval_idx``: evaluation runs the first ``eval_idx + 1`` layers only (-1: all); training
  always runs every layer.

Recollection: denoising queries travel in the plain chain group only, ``[denoising ; matching]``
under their attention mask, and are stripped when an earlier group is recollected (as
SQR-DINO); ``recollect_denoising=True`` keeps them in every group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sqr.layers.box_ops import refine_boxes
from sqr.layers.mlp import MLP
from sqr.layers.ms_deform_attn_v2 import DeformableAttentionV2
from sqr.modeling.sqr import (
    DecodedStage,
    LayerCall,
    RecollectionRunner,
    RecollectionSchedule,
)

from .base import RecollectingDecoder
from .deformable import DeformableDecoderLayer
from .dino import DinoDecoderOutput, with_denoising


class RTDETRv2DecoderLayer(DeformableDecoderLayer):
    """Deformable-DETR's post-norm layer (its forward, unchanged) with RT-DETRv2's
    cross-attention.

    Args:
        embed_dim, num_heads, num_levels, feedforward_dim, dropout: see
            :class:`~sqr.modeling.decoders.deformable.DeformableDecoderLayer`.
        num_points, cross_attn_method: see
            :class:`~sqr.layers.ms_deform_attn_v2.DeformableAttentionV2`.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_levels: int,
        num_points: int | Sequence[int],
        feedforward_dim: int,
        dropout: float,
        cross_attn_method: str = "default",
    ) -> None:
        # The parent builds mmcv's attention; it is replaced (one small throwaway module at
        # construction) so that the layer's forward stays the parent's.
        super().__init__(embed_dim, num_heads, num_levels, 1, feedforward_dim, dropout)
        self.cross_attn = DeformableAttentionV2(
            embed_dim, num_heads, num_levels, num_points, cross_attn_method, dropout=dropout
        )
        nn.init.xavier_uniform_(self.ffn.linear1.weight)
        nn.init.xavier_uniform_(self.ffn.linear2.weight)


@dataclass(frozen=True)
class RTDETRv2Inputs:
    """What the stages of one forward pass read besides the queries.

    Attributes:
        memory: Tensor[B, S, C], the flattened levels.
        spatial_shapes: (H_l, W_l) per level.
        bbox_embed: the detector's per-stage box heads.
        num_queries: Q, the matching queries; a longer group carries denoising queries first.
        attn_mask: Bool[P + Q, P + Q] of a group carrying denoising queries, or None.
    """

    memory: torch.Tensor
    spatial_shapes: Sequence[tuple[int, int]]
    bbox_embed: nn.ModuleList
    num_queries: int
    attn_mask: torch.Tensor | None


class RTDETRv2Decoder(RecollectingDecoder):
    """RT-DETRv2's decoder (see the module docstring).

    Args:
        num_stages: decoder layers.
        embed_dim: channels.
        num_heads: attention heads.
        num_levels: feature levels.
        num_points: samples per head and level (one count, or one per level).
        feedforward_dim: FFN hidden channels.
        dropout: dropout of the layers (RT-DETRv2: 0).
        cross_attn_method: ``"default"`` or ``"discrete"``
            (:class:`~sqr.layers.ms_deform_attn_v2.DeformableAttentionV2`).
        eval_idx: the last layer evaluation runs (-1: the last of all).
        inverse_sigmoid_eps: clamp of the logit used to refine boxes (RT-DETR: 1e-5).
        recollect_denoising: keep the denoising queries in every recollected group.
        checkpoint_recollected: see :class:`~sqr.modeling.decoders.base.RecollectingDecoder`.
    """

    def __init__(
        self,
        num_stages: int = 6,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 3,
        num_points: int | Sequence[int] = 4,
        feedforward_dim: int = 1024,
        dropout: float = 0.0,
        cross_attn_method: str = "default",
        eval_idx: int = -1,
        inverse_sigmoid_eps: float = 1e-5,
        recollect_denoising: bool = False,
        checkpoint_recollected: bool = False,
    ) -> None:
        if not -num_stages <= eval_idx < num_stages:
            raise ValueError(f"eval_idx={eval_idx} must index one of the {num_stages} layers")
        if isinstance(num_points, Sequence):
            num_points = list(num_points)  # a config's ListConfig
        super().__init__(
            (
                RTDETRv2DecoderLayer(
                    embed_dim,
                    num_heads,
                    num_levels,
                    num_points,
                    feedforward_dim,
                    dropout,
                    cross_attn_method,
                )
                for _ in range(num_stages)
            ),
            checkpoint_recollected,
        )
        self.query_pos_head = MLP(4, 2 * embed_dim, embed_dim, 2)
        nn.init.xavier_uniform_(self.query_pos_head.layers[0].weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[1].weight)
        self.num_levels = num_levels
        self.eval_idx = eval_idx % num_stages
        self.eps = inverse_sigmoid_eps
        self.recollect_denoising = recollect_denoising

    @property
    def num_eval_stages(self) -> int:
        """The layers evaluation runs: ``eval_idx + 1``."""
        return self.eval_idx + 1

    def forward(
        self,
        content: torch.Tensor,
        reference: torch.Tensor,
        memory: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        bbox_embed: nn.ModuleList,
        schedule: RecollectionSchedule,
        denoising_content: torch.Tensor | None = None,
        denoising_boxes: torch.Tensor | None = None,
        denoising_mask: torch.Tensor | None = None,
    ) -> DinoDecoderOutput:
        """Decode every group the schedule asks for.

        Args:
            content: Tensor[B, Q, C] initial query content.
            reference: Tensor[B, Q, 4] initial reference boxes (normalised cxcywh, detached).
            memory: Tensor[B, S, C] the flattened levels.
            spatial_shapes: (H_l, W_l) per level.
            bbox_embed: the per-stage box heads (one per layer).
            schedule: which groups each stage decodes; in evaluation the plain schedule of
                :attr:`num_eval_stages` stages (or of all of them).
            denoising_content, denoising_boxes, denoising_mask: the denoising queries
                Tensor[B, P, C], their boxes Tensor[B, P, 4] and the mask Bool[P + Q, P + Q]
                of a group carrying them; None without them.

        Returns:
            :class:`~sqr.modeling.decoders.dino.DinoDecoderOutput`.
        """
        if len(bbox_embed) != self.num_stages:
            raise ValueError(f"{len(bbox_embed)} box heads for {self.num_stages} decoder stages")
        num_queries = content.shape[1]
        content, reference = with_denoising(
            content, reference, denoising_content, denoising_boxes, denoising_mask
        )
        inputs = RTDETRv2Inputs(memory, spatial_shapes, bbox_embed, num_queries, denoising_mask)
        stages = self.run_schedule(schedule, content, reference, inputs)
        return DinoDecoderOutput.from_stages(stages, num_queries)

    def run_schedule(
        self,
        schedule: RecollectionSchedule,
        content: torch.Tensor,
        reference: torch.Tensor,
        inputs: RTDETRv2Inputs,
    ) -> list[DecodedStage]:
        """:meth:`RecollectingDecoder.run_schedule`, which in evaluation also takes a plain
        schedule of :attr:`num_eval_stages` stages: the first layers only (``eval_idx``)."""
        if self.training or schedule.num_stages == self.num_stages:
            return super().run_schedule(schedule, content, reference, inputs)
        if not schedule.is_plain or schedule.num_stages != self.num_eval_stages:
            raise ValueError(
                f"evaluation runs a plain schedule of {self.num_eval_stages} (eval_idx "
                f"{self.eval_idx}) or {self.num_stages} stages, got {schedule}"
            )
        return RecollectionRunner(schedule, False).run(self, content, reference, inputs)

    def stage_call(self, stage: int, inputs: RTDETRv2Inputs) -> LayerCall:
        layer = self.layers[stage]
        value = layer.cross_attn.project_value(inputs.memory, inputs.spatial_shapes)

        def call(content: torch.Tensor, reference: torch.Tensor, num_groups: int):
            denoised = content.shape[1] // num_groups != inputs.num_queries
            mask = inputs.attn_mask if denoised else None
            query_pos = self.query_pos_head(reference)
            return layer(content, query_pos, reference, value, num_groups, mask)

        return call

    def refine_references(
        self, stage: int, decoded: DecodedStage, inputs: RTDETRv2Inputs
    ) -> list[torch.Tensor]:
        # With the graph: the next stage predicts its boxes from them (look forward twice).
        joined = decoded.inputs[0] if len(decoded.inputs) == 1 else torch.cat(decoded.inputs, 1)
        boxes = refine_boxes(inputs.bbox_embed[stage](decoded.output), joined, self.eps)
        return list(boxes.split(decoded.group_sizes, dim=1))

    def recollect_group(
        self, content: torch.Tensor, reference: torch.Tensor, inputs: RTDETRv2Inputs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The denoising queries come first; a recollected group leaves them to the chain.
        if self.recollect_denoising:
            return content, reference
        return content[:, -inputs.num_queries :], reference[:, -inputs.num_queries :]
