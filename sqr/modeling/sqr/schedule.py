"""The Selective Query Recollection schedule: which query groups each decoder stage decodes.

A *group* is one query set (content plus reference boxes/points). The *reserve* is the list of
groups produced so far: index 0 holds the initial queries, and stage ``s`` decodes a contiguous
slice of the reserve with its own layer, appending one output group per input group, in order.
Output group ``i`` (flat, stage-major) therefore sits at reserve index ``i + 1``.

Modes (S stages):

* ``none``: stage s decodes the output of stage s-1: the plain decoder, one group per stage.
* ``selective`` (the paper), from ``start_stage`` k: a stage s >= k decodes every output group of
  stages s-1 and s-2 (the initial queries count as stage -1); a stage s < k only those of s-1.
  For S = 6, k = 1 this gives 1, 2, 3, 5, 8, 13 groups (32), the official
  ``start_q=[0, 0, 1, 2, 4, 7]``, ``end_q=[1, 2, 4, 7, 12, 20]``.
* ``dense``: stage s decodes every group produced so far: 1, 2, 4, 8, 16, 32 (63).
* explicit ``start_q`` / ``end_q`` reserve slices, as the official configs write them.

Every slice must end at the newest group, so the last group of each stage is the plain decoder
chain: that is what makes the last prediction of training the one inference produces.

A detector is configured with a :class:`Recollection` (the mode and its options, for any depth)
and builds the schedule from its decoder's number of stages, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence

_MODES = ("none", "selective", "dense")


class Recollection:
    """How a detector recollects in training, whatever its depth: the arguments of
    :class:`RecollectionSchedule` but the number of stages, which comes from the decoder.

    A plain class, not a dataclass: a config's ``L(Recollection)(...)`` must stay a call that
    OmegaConf does not turn into a structured config.

    Args:
        mode: "none" (the baseline), "selective" (SQR) or "dense"; ignored when ``start_q`` /
            ``end_q`` are given.
        start_stage: first stage that recollects, for "selective" (1 in the paper).
        start_q: explicit first reserve index decoded by each stage.
        end_q: explicit end (exclusive) of each stage's reserve slice.
    """

    def __init__(
        self,
        mode: str = "selective",
        start_stage: int = 1,
        start_q: Sequence[int] | None = None,
        end_q: Sequence[int] | None = None,
    ) -> None:
        self.mode = mode
        self.start_stage = start_stage
        self.start_q = None if start_q is None else list(start_q)
        self.end_q = None if end_q is None else list(end_q)

    def schedule(self, num_stages: int) -> RecollectionSchedule:
        """The schedule of a ``num_stages``-stage decoder (ValueError on a bad setting)."""
        return RecollectionSchedule(
            num_stages, self.mode, self.start_stage, self.start_q, self.end_q
        )

    def __repr__(self) -> str:
        return (
            f"Recollection(mode={self.mode!r}, start_stage={self.start_stage}, "
            f"start_q={self.start_q}, end_q={self.end_q})"
        )


class RecollectionSchedule:
    """Reserve slices per stage, and the counts derived from them.

    Args:
        num_stages: decoder stages (layers).
        mode: "none", "selective" or "dense"; ignored when ``start_q``/``end_q`` are given.
        start_stage: first stage that recollects, for "selective" (1 in the paper).
        start_q: explicit first reserve index decoded by each stage.
        end_q: explicit end (exclusive) of each stage's reserve slice.
    """

    def __init__(
        self,
        num_stages: int,
        mode: str = "selective",
        start_stage: int = 1,
        start_q: Sequence[int] | None = None,
        end_q: Sequence[int] | None = None,
    ) -> None:
        if num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {num_stages}")
        if (start_q is None) != (end_q is None):
            raise ValueError("give both start_q and end_q, or neither")
        if start_q is None:
            if mode not in _MODES:
                raise ValueError(f"recollection mode must be one of {_MODES}, got {mode!r}")
            if mode == "selective" and not 1 <= start_stage <= num_stages:
                raise ValueError(f"start_stage must be in 1..{num_stages}, got {start_stage}")
            start_q, end_q = _slices(num_stages, mode, start_stage)
            self.mode = mode
        else:
            self.mode = "custom"
        self.num_stages = num_stages
        self.start_q, self.end_q = _validated(num_stages, list(start_q), list(end_q))
        self.groups_per_stage = tuple(e - s for s, e in zip(self.start_q, self.end_q, strict=True))
        self.group_stage = tuple(s for s, g in enumerate(self.groups_per_stage) for _ in range(g))

    @property
    def num_groups(self) -> int:
        """Supervised output groups over all stages (6 for the plain 6-stage decoder, 32 SQR)."""
        return len(self.group_stage)

    @property
    def is_plain(self) -> bool:
        """True when every stage decodes one group: the plain decoder."""
        return all(g == 1 for g in self.groups_per_stage)

    def sources(self, stage: int) -> range:
        """Reserve indices decoded by ``stage`` (0 = initial queries, r = output group r - 1)."""
        return range(self.start_q[stage], self.end_q[stage])

    def is_consumed(self, stage: int) -> bool:
        """Whether a later stage decodes any output group of ``stage`` (never the last stage)."""
        out = self.output_slice(stage)
        first, stop = out.start + 1, out.stop + 1  # the outputs' reserve indices
        later = zip(self.start_q[stage + 1 :], self.end_q[stage + 1 :], strict=True)
        return any(begin < stop and first < end for begin, end in later)

    def output_slice(self, stage: int) -> slice:
        """Flat output-group indices produced by ``stage``."""
        begin = sum(self.groups_per_stage[:stage])
        return slice(begin, begin + self.groups_per_stage[stage])

    def __repr__(self) -> str:
        return (
            f"RecollectionSchedule(mode={self.mode!r}, groups per stage "
            f"{list(self.groups_per_stage)}, {self.num_groups} groups, start_q={self.start_q}, "
            f"end_q={self.end_q})"
        )


def _slices(num_stages: int, mode: str, start_stage: int) -> tuple[list[int], list[int]]:
    """Reserve slices of the named modes (see the module docstring)."""
    # first_output[s + 1] = reserve index of stage s's first output; stage -1 is index 0.
    first_output = [0]
    size = 1  # groups in the reserve
    start_q, end_q = [], []
    for stage in range(num_stages):
        if mode == "dense":
            begin = 0
        elif mode == "selective" and stage >= start_stage:
            begin = first_output[max(stage - 1, 0)]  # outputs of stages s-2 and s-1
        else:
            begin = first_output[stage]  # outputs of stage s-1 only
        start_q.append(begin)
        end_q.append(size)
        first_output.append(size)
        size += size - begin
    return start_q, end_q


def _validated(num_stages: int, start_q: list[int], end_q: list[int]) -> tuple[list, list]:
    for name, values in (("start_q", start_q), ("end_q", end_q)):
        if len(values) != num_stages:
            raise ValueError(
                f"{name} has {len(values)} entries but the decoder has {num_stages} stages: "
                f"{name}={values}"
            )
    size = 1
    for stage, (begin, end) in enumerate(zip(start_q, end_q, strict=True)):
        if not 0 <= begin < end:
            raise ValueError(
                f"stage {stage}: slice start_q={begin}, end_q={end} is empty or negative"
            )
        if end != size:
            raise ValueError(
                f"stage {stage}: end_q={end} must equal the reserve size {size} at that stage, so "
                "that the stage decodes the newest group (the plain decoder chain)"
            )
        size += end - begin
    return start_q, end_q
