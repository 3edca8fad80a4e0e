"""The base of every decoder: a cascade of stages that follows a recollection schedule.

SQR's bookkeeping (the reserve of query groups, which references are detached, which outputs get
new references, activation checkpointing of the recollected groups) is
:class:`~sqr.modeling.sqr.RecollectionRunner`, written once. A decoder subclasses
:class:`RecollectingDecoder` and says only what is its own:

* :meth:`~RecollectingDecoder.stage_call`: what one stage does to G groups side by side;
* :meth:`~RecollectingDecoder.refine_references`: how a stage's outputs refine the references;
* :meth:`~RecollectingDecoder.recollect_group`: what a recollected group keeps (all of it,
  unless some queries, such as DINO's denoising ones, travel in the chain group only);
* :meth:`~RecollectingDecoder.detaches_references`: whether references are detached between
  stages, as the baseline detaches its boxes.

What a forward pass reads besides the queries (the memory, its shapes, the detector's box heads)
travels as one plain record, the decoder's ``inputs``, handed to each hook. See
``docs/ARCHITECTURE.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn

from sqr.modeling.sqr import DecodedStage, LayerCall, RecollectionRunner, RecollectionSchedule


class RecollectingDecoder(nn.Module):
    """Stage layers run under a :class:`~sqr.modeling.sqr.RecollectionSchedule`.

    Args:
        layers: one module per stage, in order (registered as ``layers``).
        checkpoint_recollected: in training, run the recollected groups of each stage under
            activation checkpointing, one group at a time (the plain chain group runs normally):
            same results, less memory, some extra time.
    """

    def __init__(self, layers: Iterable[nn.Module], checkpoint_recollected: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.checkpoint_recollected = checkpoint_recollected

    @property
    def num_stages(self) -> int:
        """Stages of the cascade: the schedule a detector builds has as many."""
        return len(self.layers)

    def run_schedule(
        self, schedule: RecollectionSchedule, content: Tensor, reference: Tensor, inputs: Any
    ) -> list[DecodedStage]:
        """Decode every group ``schedule`` asks for, from the initial group.

        Args:
            schedule: which reserve groups each stage decodes.
            content: Tensor[B, Q, C] initial query content.
            reference: Tensor[B, Q, D] initial references.
            inputs: this forward pass's record for the hooks.

        Returns:
            One :class:`~sqr.modeling.sqr.DecodedStage` per stage.
        """
        if schedule.num_stages != self.num_stages:
            raise ValueError(
                f"schedule has {schedule.num_stages} stages, {type(self).__name__} has "
                f"{self.num_stages}"
            )
        runner = RecollectionRunner(schedule, self.checkpoint_recollected and self.training)
        return runner.run(self, content, reference, inputs)

    def stage_call(self, stage: int, inputs: Any) -> LayerCall:
        """The call of ``stage`` on G groups of one kind side by side: content Tensor[B, G*Q, C],
        references Tensor[B, G*Q, D] and G in, their outputs side by side out. Work shared by
        all of a stage's groups (projecting the memory) happens here, once per stage."""
        raise NotImplementedError

    def refine_references(self, stage: int, decoded: DecodedStage, inputs: Any) -> list[Tensor]:
        """New references of a stage's output groups, one Tensor[B, Q_g, D] per group, from the
        stage's output and the references its groups were decoded with (``decoded.inputs``)."""
        raise NotImplementedError

    def recollect_group(
        self, content: Tensor, reference: Tensor, inputs: Any
    ) -> tuple[Tensor, Tensor]:
        """A reserve group as a stage takes it when it is not that stage's chain group."""
        return content, reference

    def detaches_references(self, inputs: Any) -> bool:
        """Detach a reference when a stage after the first takes it (the first stage's stay
        attached, so that learnable initial references learn)."""
        return True
