"""The recollection runner: SQR's reserve of query groups, written once for every decoder.

A decoder stage decodes the groups its :class:`~sqr.modeling.sqr.RecollectionSchedule` slice names
and appends one output group per input group to the *reserve*. The runner owns everything about
that reserve: the groups' contents and references, which references are detached when a stage
takes them, which outputs a later stage consumes (only those get new references), and activation
checkpointing of the recollected groups. A decoder supplies only what is its own
(:class:`~sqr.modeling.decoders.base.RecollectingDecoder`): the layer call of a stage, how a
stage's outputs refine the references, what a recollected group keeps, and whether references
are detached between stages. See ``docs/ARCHITECTURE.md``.

The groups a stage decodes sit side by side on the query axis, ``[B, G*Q, C]``, against the
unrepeated memory; only self-attention separates them. Groups of different lengths or reference
kinds (a chain group carrying denoising queries next to recollected matching groups; initial
points next to refined boxes) are decoded in runs of one kind each, against the same per-stage
memory projection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .schedule import RecollectionSchedule

if TYPE_CHECKING:
    from sqr.modeling.decoders.base import RecollectingDecoder

#: What a stage's layer call returns: Tensor[B, G*Q, ...], or a tuple of them whose first
#: element is the new content.
StageOutput = Tensor | tuple[Tensor, ...]
#: A stage's layer call on G groups of one kind side by side: content Tensor[B, G*Q, C],
#: references Tensor[B, G*Q, D] and G in, the groups' outputs side by side out.
LayerCall = Callable[[Tensor, Tensor, int], StageOutput]


@dataclass(frozen=True)
class DecodedStage:
    """One stage's result.

    Attributes:
        output: the layer calls' outputs for all the stage's groups side by side,
            [B, sum(Q_g), ...] (or a tuple of them).
        references: per run of groups of one kind, their references joined, [B, sum(Q_g), D],
            as the reserve held them (with their graph: the layer got them detached where the
            decoder detaches references).
        inputs: the same references as the layer got them.
        group_sizes: Q_g of each group, in order (all equal unless groups carry extra queries).
        groups_per_run: how many groups each run holds.
    """

    output: StageOutput
    references: list[Tensor]
    inputs: list[Tensor]
    group_sizes: list[int]
    groups_per_run: list[int]

    def group_references(self, inputs: bool = False) -> list[Tensor]:
        """Each group's reference, [B, Q_g, D], as the reserve held it (``inputs``: as the
        layer got it)."""
        groups = []
        for run, count in zip(
            self.inputs if inputs else self.references, self.groups_per_run, strict=True
        ):
            groups.extend([run] if count == 1 else run.split(run.shape[1] // count, dim=1))
        return groups


def split_groups(output: StageOutput, group_sizes: Sequence[int]) -> list[StageOutput]:
    """A stage output [B, sum(Q_g), ...] (or a tuple of them) as one output per group."""
    if isinstance(output, Tensor):
        return list(output.split(list(group_sizes), dim=1))
    parts = [t.split(list(group_sizes), dim=1) for t in output]
    return [tuple(p[g] for p in parts) for g in range(len(group_sizes))]


def stack_groups(per_stage: Sequence[Tensor], num_queries: int) -> Tensor:
    """Every stage's output groups, group-major.

    Args:
        per_stage: per stage Tensor[B, G_s*Q, D], its groups side by side.
        num_queries: Q.

    Returns:
        Tensor[G_total, B, Q, D], the groups in stage order.
    """
    flat = torch.cat(list(per_stage), dim=1)  # [B, G_total*Q, D]
    return flat.view(flat.shape[0], -1, num_queries, flat.shape[-1]).transpose(0, 1)


class RecollectionRunner:
    """Decode every group a schedule asks for, with one decoder's layers.

    Args:
        schedule: which reserve groups each stage decodes.
        checkpoint_recollected: recompute the recollected groups (all of a stage's groups but the
            last, the plain chain) in backward instead of keeping their activations, one group
            at a time so that recomputation never holds more than one group's activations.
            Self-attention is per group, so splitting the groups off changes nothing. Decoders
            pass their flag only in training.
    """

    def __init__(self, schedule: RecollectionSchedule, checkpoint_recollected: bool) -> None:
        self.schedule = schedule
        self.checkpoint_recollected = checkpoint_recollected

    def run(
        self, decoder: RecollectingDecoder, content: Tensor, reference: Tensor, inputs: Any
    ) -> list[DecodedStage]:
        """Decode from the initial group.

        Args:
            decoder: the layers and their reference rules.
            content: Tensor[B, Q, C] initial query content.
            reference: Tensor[B, Q, D] initial references.
            inputs: what the decoder's stages read besides the queries in this forward pass
                (the memory, ...), handed to each of its hooks.

        Returns:
            One :class:`DecodedStage` per stage.
        """
        schedule = self.schedule
        detach = decoder.detaches_references(inputs)
        # The reserve: index 0 is the initial group; output group r sits at index r + 1.
        contents: list[Tensor | None] = [content]
        references: list[Tensor | None] = [reference]
        stages = []
        for stage in range(schedule.num_stages):
            sources = schedule.sources(stage)
            groups = [contents[i] for i in sources]
            refs = [references[i] for i in sources]
            # All but the last source are recollected; the last is the chain group.
            for g in range(len(groups) - 1):
                groups[g], refs[g] = decoder.recollect_group(groups[g], refs[g], inputs)
            decoded = self._decode(
                decoder.stage_call(stage, inputs), groups, refs, detach and stage > 0
            )
            stages.append(decoded)
            sizes = decoded.group_sizes
            if schedule.is_consumed(stage):
                outputs = split_groups(decoded.output, sizes)
                contents.extend(o if isinstance(o, Tensor) else o[0] for o in outputs)
                references.extend(decoder.refine_references(stage, decoded, inputs))
            else:  # nothing decodes these outputs again: keep the reserve indices aligned only
                contents.extend([None] * len(sizes))
                references.extend([None] * len(sizes))
        return stages

    def _decode(
        self, layer: LayerCall, groups: list[Tensor], refs: list[Tensor], detach: bool
    ) -> DecodedStage:
        """One stage's groups: joined in runs of one kind (length and reference size), each run
        one layer call, the recollected groups checkpointed one by one if asked."""
        kinds = [(g.shape[1], r.shape[-1]) for g, r in zip(groups, refs, strict=True)]
        cuts = [i for i in range(1, len(kinds)) if kinds[i] != kinds[i - 1]]
        runs = list(pairwise([0, *cuts, len(groups)]))
        run_contents = [_joined(groups[a:b]) for a, b in runs]
        run_refs = [_joined(refs[a:b]) for a, b in runs]
        run_inputs = [r.detach() for r in run_refs] if detach else run_refs
        sizes = [g.shape[1] for g in groups]
        chain = len(groups) - 1
        outputs = []
        for (first, stop), content, reference in zip(runs, run_contents, run_inputs, strict=True):
            if not self.checkpoint_recollected or chain == 0:
                outputs.append(layer(content, reference, stop - first))
                continue
            for g in range(first, stop):
                piece = (groups[g], refs[g].detach() if detach else refs[g])
                if g == chain:  # the plain chain runs normally
                    outputs.append(layer(*piece, 1))
                else:
                    outputs.append(checkpoint(layer, *piece, 1, use_reentrant=False))
        output = outputs[0] if len(outputs) == 1 else _cat(outputs)
        return DecodedStage(output, run_refs, run_inputs, sizes, [b - a for a, b in runs])


def _joined(groups: Sequence[Tensor]) -> Tensor:
    """Groups side by side on the query axis; a single group as it is, without a copy."""
    return groups[0] if len(groups) == 1 else torch.cat(list(groups), dim=1)


def _cat(outputs: list[StageOutput]) -> StageOutput:
    if isinstance(outputs[0], Tensor):
        return torch.cat(outputs, dim=1)
    return tuple(torch.cat(parts, dim=1) for parts in zip(*outputs, strict=True))
