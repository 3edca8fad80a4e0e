"""The recollection schedule against the paper's group counts and the official slices."""

from __future__ import annotations

import pytest

from sqr.modeling.sqr import RecollectionSchedule

# Groups per stage for 6 stages (Chen et al., CVPR 2023), selective from stage k = 1..5, and
# dense.
SELECTIVE = {
    1: ((1, 2, 3, 5, 8, 13), 32),
    2: ((1, 1, 2, 3, 5, 8), 20),
    3: ((1, 1, 1, 2, 3, 5), 13),
    4: ((1, 1, 1, 1, 2, 3), 9),
    5: ((1, 1, 1, 1, 1, 2), 7),
}


@pytest.mark.parametrize("start_stage", sorted(SELECTIVE))
def test_selective_group_counts(start_stage: int) -> None:
    schedule = RecollectionSchedule(6, "selective", start_stage)
    groups, total = SELECTIVE[start_stage]
    assert schedule.groups_per_stage == groups
    assert schedule.num_groups == total


def test_official_slices_and_group_stage() -> None:
    schedule = RecollectionSchedule(6)
    # The official SQR configs' start_q / end_q (without their unused seventh entry).
    assert schedule.start_q == [0, 0, 1, 2, 4, 7]
    assert schedule.end_q == [1, 2, 4, 7, 12, 20]
    assert schedule.group_stage == (0, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, *[4] * 8, *[5] * 13)
    # Stage 5 decodes reserve 7..19, i.e. output groups 6..18: all of stages 3 and 4.
    assert list(schedule.sources(5)) == list(range(7, 20))
    assert schedule.output_slice(5) == slice(19, 32)
    explicit = RecollectionSchedule(6, start_q=[0, 0, 1, 2, 4, 7], end_q=[1, 2, 4, 7, 12, 20])
    assert explicit.groups_per_stage == schedule.groups_per_stage and explicit.mode == "custom"


def test_dense_none_and_seven_stages() -> None:
    assert RecollectionSchedule(6, "dense").groups_per_stage == (1, 2, 4, 8, 16, 32)
    assert RecollectionSchedule(6, "dense").num_groups == 63
    plain = RecollectionSchedule(6, "none")
    assert plain.groups_per_stage == (1,) * 6 and plain.is_plain
    # AdaMixer's 7-stage variant follows the same rule: Fibonacci counts.
    assert RecollectionSchedule(7).groups_per_stage == (1, 2, 3, 5, 8, 13, 21)


def test_only_the_last_stage_is_never_consumed() -> None:
    for schedule in (RecollectionSchedule(6), RecollectionSchedule(6, "none")):
        assert [schedule.is_consumed(s) for s in range(6)] == [True] * 5 + [False]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "sparse"}, "sparse"),
        ({"start_stage": 0}, "start_stage"),
        ({"start_q": [0, 0, 1, 2, 4, 7, 12], "end_q": [1, 2, 4, 7, 12, 20, 33]}, "7 entries"),
        ({"start_q": [0, 0, 1, 2, 4, 7], "end_q": [1, 2, 4, 7, 12, 19]}, "end_q=19"),
        ({"start_q": [0, 0, 1, 2, 4, 21], "end_q": [1, 2, 4, 7, 12, 20]}, "start_q=21"),
        ({"start_q": [0, 0, 1, 2, 4, 7]}, "both"),
    ],
)
def test_bad_schedules_name_the_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RecollectionSchedule(6, **kwargs)
