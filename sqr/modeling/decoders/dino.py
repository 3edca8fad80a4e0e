"""DINO's mixed query selection and decoder, with group-batched query recollection.

Numerics follow detrex's DINO (``projects/dino/modeling/dino_transformer.py`` at e244e6c),
rewritten batch-first from the typed layers of Deformable-DETR:

* Mixed query selection: every encoder token proposes a box (the two-stage proposals); the
  ``num_queries`` tokens whose best class scores highest give the decoder its reference boxes
  (detached), while the query content is a learnt embedding, the same for every image.
* Decoder layers are Deformable-DETR's (post-norm self-attention, deformable cross-attention
  on boxes, FFN); each layer's query position is ``ref_point_head`` of the sine embedding of
  its reference boxes (scaled by the first level's valid ratios), as in DAB-DETR.
* Look forward twice: a layer refines the references it got (detached after the first layer)
  with its own box head, and the boxes of layer l are predicted from layer l-1's refined
  references *before* they were detached, so each box head also learns from the next layer.
  Under SQR the same holds group by group: a recollected group's boxes are predicted from the
  references that the stage which produced it refined, so that stage's box head learns from
  every later stage that decodes its output.

Recollection: denoising queries (:mod:`sqr.modeling.denoising`) travel in the plain chain
group only, ``[denoising ; matching]`` under its attention mask, and are stripped when an
earlier group is recollected; ``recollect_denoising=True`` keeps them in every group instead.
Groups of both lengths are decoded as separate runs against one projection of the memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from sqr.layers.box_ops import refine_boxes
from sqr.layers.mlp import MLP
from sqr.layers.position_encoding import sine_box_embedding
from sqr.modeling.sqr import (
    DecodedStage,
    RecollectingDecoder,
    RecollectionRunner,
    RecollectionSchedule,
)
from sqr.modeling.sqr.runner import LayerCall

from .deformable import DeformableDecoderLayer


class DinoDecoderOutput(NamedTuple):
    """Every decoded group's queries and the references their boxes are predicted from.

    Attributes:
        hidden: Tensor[G, B, Q, C], the matching queries of every group after the final norm,
            in the schedule's group order.
        references: Tensor[G, B, Q, 4], each group's input references as the reserve held
            them (not detached: look forward twice), normalised cxcywh.
        denoising_hidden: Tensor[G_dn, B, P, C] of the groups carrying denoising queries, or
            None without them.
        denoising_references: Tensor[G_dn, B, P, 4], or None.
        denoising_group_stage: the stage of each of those groups.
    """

    hidden: torch.Tensor
    references: torch.Tensor
    denoising_hidden: torch.Tensor | None
    denoising_references: torch.Tensor | None
    denoising_group_stage: tuple[int, ...]


class DinoDecoder(nn.Module):
    """DINO decoder: deformable layers on reference boxes, refined layer by layer.

    Args:
        num_layers: decoder layers (stages).
        embed_dim: channels.
        num_heads: attention heads.
        num_levels: feature levels.
        num_points: samples per head and level.
        feedforward_dim: FFN hidden channels.
        dropout: dropout in self-attention, cross-attention output and FFN (0 in DINO).
        inverse_sigmoid_eps: clamp of the logit used to refine boxes (detrex: 1e-3).
        recollect_denoising: keep the denoising queries in every recollected group (each
            group then carries them, under the same mask, and gets its own denoising loss);
            by default they are decoded in the plain chain only.
        checkpoint_recollected: in training, run the recollected groups of each stage under
            activation checkpointing (the plain chain group runs normally): same results, less
            memory, some extra time. Off by default.
    """

    def __init__(
        self,
        num_layers: int = 6,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        feedforward_dim: int = 2048,
        dropout: float = 0.0,
        inverse_sigmoid_eps: float = 1e-3,
        recollect_denoising: bool = False,
        checkpoint_recollected: bool = False,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableDecoderLayer(
                embed_dim, num_heads, num_levels, num_points, feedforward_dim, dropout
            )
            for _ in range(num_layers)
        )
        self.ref_point_head = MLP(2 * embed_dim, embed_dim, embed_dim, 2)
        self.norm = nn.LayerNorm(embed_dim)
        self.embed_dim = embed_dim
        self.num_levels = num_levels
        self.eps = inverse_sigmoid_eps
        self.recollect_denoising = recollect_denoising
        self.checkpoint_recollected = checkpoint_recollected

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def decode_stage(
        self,
        stage: int,
        content: torch.Tensor,
        reference: torch.Tensor,
        value_maps: Sequence[torch.Tensor],
        ratios: torch.Tensor,
        num_groups: int,
        attn_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Run layer ``stage`` on ``num_groups`` groups side by side.

        Args:
            stage: layer index.
            content: Tensor[B, G*Q, C].
            reference: Tensor[B, G*Q, 4] reference boxes, normalised cxcywh.
            value_maps: the layer's projected memory (``cross_attn.project_value``).
            ratios: Tensor[B, L, 2] valid ratios (w, h).
            num_groups: G.
            attn_mask: Bool[Q, Q] self-attention mask of each group, or None.

        Returns:
            Tensor[B, G*Q, C] layer output (before the final norm).
        """
        reference_points = reference[:, :, None] * torch.cat([ratios, ratios], -1)[:, None]
        sine = sine_box_embedding(reference_points[:, :, 0], num_feats=self.embed_dim // 2)
        query_pos = self.ref_point_head(sine)
        layer = self.layers[stage]
        return layer(content, query_pos, reference_points, value_maps, num_groups, attn_mask)

    def forward(
        self,
        content: torch.Tensor,
        reference: torch.Tensor,
        memory: torch.Tensor,
        padding_mask: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
        ratios: torch.Tensor,
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
            memory: Tensor[B, S, C] encoder output.
            padding_mask: Bool[B, S], True on padding.
            spatial_shapes: (H_l, W_l) per level.
            ratios: Tensor[B, L, 2] valid ratios (w, h).
            bbox_embed: the per-layer box heads (at least one per layer).
            schedule: which groups each stage decodes.
            denoising_content: Tensor[B, P, C], the denoising queries
                (:class:`~sqr.modeling.denoising.DenoisingQueries`) decoded before the matching
                ones in training; None without them.
            denoising_boxes: Tensor[B, P, 4] their reference boxes (normalised cxcywh).
            denoising_mask: Bool[P + Q, P + Q] the self-attention mask of a group carrying them.

        Returns:
            :class:`DinoDecoderOutput`: every group's matching queries and the references their
            boxes are predicted from, and the same for the groups carrying denoising queries.
        """
        if schedule.num_stages != self.num_layers:
            raise ValueError(
                f"schedule has {schedule.num_stages} stages, decoder has {self.num_layers} layers"
            )
        if len(bbox_embed) < self.num_layers:
            raise ValueError(f"{len(bbox_embed)} box heads for {self.num_layers} decoder layers")
        num_queries = content.shape[1]
        given = [x is not None for x in (denoising_content, denoising_boxes, denoising_mask)]
        if any(given) and not all(given):
            raise ValueError("give the denoising queries' content, boxes and mask, or none")
        if denoising_content is not None:
            content = torch.cat([denoising_content, content], 1)
            reference = torch.cat([denoising_boxes, reference], 1)
        stage_layers = _DinoStages(
            self,
            memory,
            padding_mask,
            spatial_shapes,
            ratios,
            bbox_embed,
            num_queries,
            denoising_mask,
        )
        runner = RecollectionRunner(schedule, self.checkpoint_recollected and self.training)
        hidden, references, dn_hidden, dn_references, dn_stage = [], [], [], [], []
        for stage, decoded in enumerate(runner.run(stage_layers, content, reference)):
            # The norm is per query: once on the stage's output, then split into groups.
            outputs = self.norm(decoded.output).split(decoded.group_sizes, dim=1)
            for output, ref in zip(outputs, decoded.group_references(), strict=True):
                extra = output.shape[1] - num_queries  # denoising queries of the group
                hidden.append(output[:, extra:])
                references.append(ref[:, extra:])
                if extra:
                    dn_hidden.append(output[:, :extra])
                    dn_references.append(ref[:, :extra])
                    dn_stage.append(stage)
        return DinoDecoderOutput(
            torch.stack(hidden),
            torch.stack(references),
            torch.stack(dn_hidden) if dn_hidden else None,
            torch.stack(dn_references) if dn_references else None,
            tuple(dn_stage),
        )


@dataclass
class _DinoStages(RecollectingDecoder):
    """The DINO decoder's side of the recollection runner, for one forward pass.

    References are detached between stages; a stage refines its groups' references (as the
    layer got them) with its box head, keeping the graph: the next stage predicts its boxes
    from them (look forward twice). A group longer than ``num_queries`` carries denoising
    queries and is decoded under ``attn_mask``.
    """

    decoder: DinoDecoder
    memory: torch.Tensor
    padding_mask: torch.Tensor
    spatial_shapes: Sequence[tuple[int, int]]
    ratios: torch.Tensor
    bbox_embed: nn.ModuleList
    num_queries: int
    attn_mask: torch.Tensor | None

    def stage_call(self, stage: int) -> LayerCall:
        value_maps = self.decoder.layers[stage].cross_attn.project_value(
            self.memory, self.spatial_shapes, self.padding_mask
        )

        def call(content: torch.Tensor, reference: torch.Tensor, num_groups: int):
            denoised = content.shape[1] // num_groups != self.num_queries
            return self.decoder.decode_stage(
                stage,
                content,
                reference,
                value_maps,
                self.ratios,
                num_groups,
                self.attn_mask if denoised else None,
            )

        return call

    def refine_references(self, stage: int, decoded: DecodedStage) -> list[torch.Tensor]:
        inputs = decoded.inputs[0] if len(decoded.inputs) == 1 else torch.cat(decoded.inputs, 1)
        delta = self.bbox_embed[stage](decoded.output)
        boxes = refine_boxes(delta, inputs, self.decoder.eps)
        return list(boxes.split(decoded.group_sizes, dim=1))

    def recollect_group(
        self, content: torch.Tensor, reference: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The denoising queries come first; a recollected group leaves them to the chain.
        if self.decoder.recollect_denoising:
            return content, reference
        return content[:, -self.num_queries :], reference[:, -self.num_queries :]
