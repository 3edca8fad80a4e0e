"""Selective Query Recollection: the schedule (which groups each stage decodes) and the runner
(the reserve of groups, decoded with any decoder's layers). The decoders' side is
:class:`sqr.modeling.decoders.base.RecollectingDecoder`."""

from .runner import DecodedStage, LayerCall, RecollectionRunner, split_groups, stack_groups
from .schedule import Recollection, RecollectionSchedule

__all__ = [
    "DecodedStage",
    "LayerCall",
    "Recollection",
    "RecollectionRunner",
    "RecollectionSchedule",
    "split_groups",
    "stack_groups",
]
