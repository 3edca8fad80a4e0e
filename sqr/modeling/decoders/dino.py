"""DINO's decoder: Deformable-DETR's, with look-forward-twice refinement and denoising queries.

Numerics follow detrex's DINO (``projects/dino/modeling/dino_transformer.py`` at e244e6c),
rewritten batch-first from the typed layers of Deformable-DETR:

* The queries come from mixed query selection (:mod:`sqr.modeling.query_selection`).
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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from sqr.layers.box_ops import refine_boxes
from sqr.layers.mlp import MLP
from sqr.layers.position_encoding import sine_box_embedding
from sqr.modeling.sqr import DecodedStage, LayerCall, RecollectionSchedule

from .deformable import DeformableDetrDecoder, DeformableInputs


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

    @classmethod
    def from_stages(
        cls,
        stages: Sequence[DecodedStage],
        num_queries: int,
        norm: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> DinoDecoderOutput:
        """Every stage's groups split into matching and denoising queries (a group longer than
        ``num_queries`` carries denoising ones first), after ``norm`` if given (per query:
        applied once to a stage's output)."""
        hidden, references, dn_hidden, dn_references, dn_stage = [], [], [], [], []
        for stage, decoded in enumerate(stages):
            output = decoded.output if norm is None else norm(decoded.output)
            outputs = output.split(decoded.group_sizes, dim=1)
            for output, ref in zip(outputs, decoded.group_references(), strict=True):
                extra = output.shape[1] - num_queries  # denoising queries of the group
                hidden.append(output[:, extra:])
                references.append(ref[:, extra:])
                if extra:
                    dn_hidden.append(output[:, :extra])
                    dn_references.append(ref[:, :extra])
                    dn_stage.append(stage)
        return cls(
            torch.stack(hidden),
            torch.stack(references),
            torch.stack(dn_hidden) if dn_hidden else None,
            torch.stack(dn_references) if dn_references else None,
            tuple(dn_stage),
        )


def with_denoising(
    content: torch.Tensor,
    reference: torch.Tensor,
    denoising_content: torch.Tensor | None,
    denoising_boxes: torch.Tensor | None,
    denoising_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chain group's initial queries: ``[denoising ; matching]`` when denoising queries are
    given (content [B, P, C], boxes [B, P, 4] and their mask, all three or none)."""
    given = [x is not None for x in (denoising_content, denoising_boxes, denoising_mask)]
    if any(given) and not all(given):
        raise ValueError("give the denoising queries' content, boxes and mask, or none")
    if denoising_content is None:
        return content, reference
    return torch.cat([denoising_content, content], 1), torch.cat([denoising_boxes, reference], 1)


@dataclass(frozen=True)
class DinoInputs(DeformableInputs):
    """:class:`DeformableInputs` plus what the denoising queries need.

    Attributes:
        num_queries: Q, the matching queries; a longer group carries denoising queries first.
        attn_mask: Bool[P + Q, P + Q], the self-attention mask of a group carrying denoising
            queries, or None without them.
    """

    num_queries: int
    attn_mask: torch.Tensor | None


class DinoDecoder(DeformableDetrDecoder):
    """DINO decoder: deformable layers on reference boxes, refined stage by stage with the
    detector's box heads, keeping the graph (look forward twice); a group longer than
    ``num_queries`` carries denoising queries and is decoded under their attention mask.

    Args:
        num_stages: decoder layers (stages).
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
        checkpoint_recollected: see :class:`~sqr.modeling.decoders.base.RecollectingDecoder`.
    """

    def __init__(
        self,
        num_stages: int = 6,
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
        super().__init__(
            num_stages,
            embed_dim,
            num_heads,
            num_levels,
            num_points,
            feedforward_dim,
            dropout,
            inverse_sigmoid_eps,
            checkpoint_recollected,
        )
        self.ref_point_head = MLP(2 * embed_dim, embed_dim, embed_dim, 2)
        self.norm = nn.LayerNorm(embed_dim)
        self.embed_dim = embed_dim
        self.recollect_denoising = recollect_denoising

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
            memory, padding_mask, spatial_shapes, ratios: see :class:`DeformableInputs`.
            bbox_embed: the per-stage box heads (at least one per stage).
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
        if bbox_embed is None:
            raise ValueError("the DINO decoder refines its references: give the box heads")
        self._check_box_heads(bbox_embed)
        num_queries = content.shape[1]
        content, reference = with_denoising(
            content, reference, denoising_content, denoising_boxes, denoising_mask
        )
        inputs = DinoInputs(
            memory,
            padding_mask,
            spatial_shapes,
            ratios,
            bbox_embed,
            None,
            reference,
            num_queries,
            denoising_mask,
        )
        stages = self.run_schedule(schedule, content, reference, inputs)
        return DinoDecoderOutput.from_stages(stages, num_queries, self.norm)

    def query_position(self, reference_points: torch.Tensor, inputs: DinoInputs) -> torch.Tensor:
        """``ref_point_head`` of the sine embedding of the scaled reference boxes."""
        sine = sine_box_embedding(reference_points[:, :, 0], num_feats=self.embed_dim // 2)
        return self.ref_point_head(sine)

    def stage_call(self, stage: int, inputs: DinoInputs) -> LayerCall:
        value_maps = self.layers[stage].cross_attn.project_value(
            inputs.memory, inputs.spatial_shapes, inputs.padding_mask
        )

        def call(content: torch.Tensor, reference: torch.Tensor, num_groups: int):
            denoised = content.shape[1] // num_groups != inputs.num_queries
            mask = inputs.attn_mask if denoised else None
            return self.decode_stage(
                stage, content, reference, value_maps, inputs, num_groups, mask
            )

        return call

    def refine_references(
        self, stage: int, decoded: DecodedStage, inputs: DinoInputs
    ) -> list[torch.Tensor]:
        # With the graph: the next stage predicts its boxes from them (look forward twice).
        joined = decoded.inputs[0] if len(decoded.inputs) == 1 else torch.cat(decoded.inputs, 1)
        delta = inputs.bbox_embed[stage](decoded.output)
        boxes = refine_boxes(delta, joined, self.eps)
        return list(boxes.split(decoded.group_sizes, dim=1))

    def recollect_group(
        self, content: torch.Tensor, reference: torch.Tensor, inputs: DinoInputs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The denoising queries come first; a recollected group leaves them to the chain.
        if self.recollect_denoising:
            return content, reference
        return content[:, -inputs.num_queries :], reference[:, -inputs.num_queries :]
