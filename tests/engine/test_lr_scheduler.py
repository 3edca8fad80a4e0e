"""Learning-rate schedules: epoch milestones, warmup in iterations, and resumable state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fvcore.common.param_scheduler import ConstantParamScheduler, MultiStepParamScheduler

from sqr.config import LazyConfig, instantiate
from sqr.engine import LRMultiplier, LRSchedule

RTDETR_RECIPES = sorted(Path("projects/sqr/configs").glob("*rtdetrv2_*.py"))


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


def rtdetr_warmup_factor(step: int, warmup_duration: int) -> float:
    """RT-DETR's LinearWarmup.get_warmup_factor, written out."""
    return min(1.0, (step + 1) / warmup_duration)


def test_rtdetr_warmup_is_its_linear_warmup() -> None:
    schedule = LRSchedule(ConstantParamScheduler(1.0), warmup_iters=2000, warmup_method="rtdetr")
    for iteration in [0, 1, 2, 3, 999, 1998, 1999, 2000, 2001, 9999]:
        assert schedule(iteration, 10000) == rtdetr_warmup_factor(iteration, 2000), iteration
    assert schedule(0, 10000) == 1 / 2000  # not the linear ramp's warmup_factor


@pytest.mark.parametrize("recipe", RTDETR_RECIPES, ids=lambda p: p.stem)
def test_rtdetr_recipes_warm_up_as_rtdetr(recipe) -> None:
    # The lr of each optimizer step, as LRSchedulerHook steps the scheduler after it.
    cfg = LazyConfig.load(str(recipe))
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [param], "lr": 1e-4}, {"params": [], "lr": 1e-5}])
    scheduler = LRMultiplier(optimizer, instantiate(cfg.lr_multiplier), max_iter=100000)
    for step in range(2003):
        lrs = [group["lr"] for group in optimizer.param_groups]
        if step in (0, 1, 2, 1000, 1998, 1999, 2000, 2002):
            factor = rtdetr_warmup_factor(step, 2000)
            assert lrs == [1e-4 * factor, 1e-5 * factor], step
        optimizer.step()
        scheduler.step()
    assert scheduler._schedule(99999, 100000) == 1.0  # no drop within the recipe


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
    # The schedule object is never pickled.
    assert set(state) == {"base_lrs", "last_epoch", "max_iter"}
    resumed_optimizer, resumed = make()
    resumed_optimizer.load_state_dict(optimizer.state_dict())
    resumed.load_state_dict(state)
    assert resumed.last_epoch == 4
    assert resumed_optimizer.param_groups[0]["lr"] == pytest.approx(0.5)
    resumed_optimizer.step()
    resumed.step()
    assert resumed.get_last_lr() == pytest.approx([0.5])


def make_run(lr: float, max_iter: int):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [param], "lr": lr}])
    # x0.1 at 80% of training, as the 50-epoch recipes.
    schedule = MultiStepParamScheduler(values=[1.0, 0.1], milestones=[40], num_updates=50)
    return optimizer, LRMultiplier(optimizer, schedule, max_iter=max_iter)


def resume(optimizer, scheduler, lr: float, max_iter: int):
    """A new run from the configuration (lr, max_iter), loading the state of the old one in
    the checkpointer's order: optimizer first, then scheduler."""
    new_optimizer, new_scheduler = make_run(lr, max_iter)
    new_optimizer.load_state_dict(optimizer.state_dict())
    new_scheduler.load_state_dict(scheduler.state_dict())
    return new_optimizer, new_scheduler


def run_steps(optimizer, scheduler, steps: int) -> list[float]:
    """The lr of each step taken."""
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_resume_applies_a_changed_learning_rate(caplog) -> None:
    optimizer, scheduler = make_run(lr=1.0, max_iter=10)
    run_steps(optimizer, scheduler, 4)
    with caplog.at_level("WARNING", logger="sqr.engine.lr_scheduler"):
        optimizer, scheduler = resume(optimizer, scheduler, lr=0.5, max_iter=10)
    assert (
        "base learning rates [1.0] in the checkpoint, [0.5] in the config; the config's "
        "apply from iteration 4" in caplog.text
    )
    assert scheduler.base_lrs == [0.5]
    # Iterations 4..9: 0.5 until 80% of 10 iterations, then x0.1.
    assert run_steps(optimizer, scheduler, 6) == pytest.approx([0.5] * 4 + [0.05] * 2)


def test_resume_with_a_longer_schedule_is_continuous(caplog) -> None:
    optimizer, scheduler = make_run(lr=1.0, max_iter=20)
    assert run_steps(optimizer, scheduler, 20) == pytest.approx([1.0] * 16 + [0.1] * 4)
    with caplog.at_level("WARNING", logger="sqr.engine.lr_scheduler"):
        optimizer, scheduler = resume(optimizer, scheduler, lr=1.0, max_iter=30)
    assert "max_iter 20 in the checkpoint, 30 in the config" in caplog.text
    # Every iteration 20..29 has the lr of the 30-iteration schedule: the drop is at 24.
    assert run_steps(optimizer, scheduler, 10) == pytest.approx([1.0] * 4 + [0.1] * 6)


def test_resume_with_an_unchanged_config_says_nothing(caplog) -> None:
    optimizer, scheduler = make_run(lr=1.0, max_iter=10)
    run_steps(optimizer, scheduler, 3)
    with caplog.at_level("WARNING", logger="sqr.engine.lr_scheduler"):
        optimizer, scheduler = resume(optimizer, scheduler, lr=1.0, max_iter=10)
    assert not caplog.records
    assert run_steps(optimizer, scheduler, 7) == pytest.approx([1.0] * 5 + [0.1] * 2)
