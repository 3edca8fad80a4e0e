"""Learning-rate schedules: epoch milestones, warmup in iterations, and resumable state."""

from __future__ import annotations

import pytest
import torch
from fvcore.common.param_scheduler import MultiStepParamScheduler

from sqr.engine import LRMultiplier, LRSchedule


def test_epoch_milestones_and_linear_warmup() -> None:
    # 50 "epochs" with a drop at 40, run for 100 iterations: 2 iterations per epoch, so the lr
    # drops at iteration 80. Warmup of 10 iterations from factor 0.001 rises linearly.
    schedule = LRSchedule(
        MultiStepParamScheduler(values=[1.0, 0.1], milestones=[40], num_updates=50),
        warmup_iters=10,
        warmup_factor=0.001,
    )
    assert schedule(0, 100) == pytest.approx(0.001)
    assert schedule(5, 100) == pytest.approx(0.001 * 0.5 + 0.5)  # halfway through the ramp
    assert schedule(10, 100) == pytest.approx(1.0)
    assert schedule(79, 100) == pytest.approx(1.0)
    assert schedule(80, 100) == pytest.approx(0.1)
    assert schedule(99, 100) == pytest.approx(0.1)


def test_bad_warmup_method_is_named() -> None:
    with pytest.raises(ValueError, match="cosine"):
        LRSchedule(
            MultiStepParamScheduler(values=[1.0], milestones=[], num_updates=1),
            warmup_method="cosine",
        )


def test_lr_multiplier_state_resumes() -> None:
    def make():
        param = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([{"params": [param], "lr": 1.0}])
        schedule = MultiStepParamScheduler(values=[1.0, 0.5], milestones=[3], num_updates=6)
        return optimizer, LRMultiplier(optimizer, schedule, max_iter=6)

    optimizer, scheduler = make()
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    assert set(state) == {"base_lrs", "last_epoch"}  # the schedule object is never pickled
    resumed_optimizer, resumed = make()
    resumed_optimizer.load_state_dict(optimizer.state_dict())
    resumed.load_state_dict(state)
    assert resumed.last_epoch == 4
    assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(0.5)
    resumed_optimizer.step()
    resumed.step()
    assert resumed.get_last_lr() == pytest.approx([0.5])
