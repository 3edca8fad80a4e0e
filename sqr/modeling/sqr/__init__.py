"""Selective Query Recollection: the schedule (which groups each stage decodes) and the runner
(the reserve of groups, decoded with any decoder's layers)."""

from .runner import (
    DecodedStage,
    RecollectingDecoder,
    RecollectionRunner,
    split_groups,
    stack_groups,
)
from .schedule import RecollectionSchedule

__all__ = [
    "DecodedStage",
    "RecollectingDecoder",
    "RecollectionRunner",
    "RecollectionSchedule",
    "split_groups",
    "stack_groups",
]
