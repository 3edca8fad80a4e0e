from fvcore.common.param_scheduler import ConstantParamScheduler, MultiStepParamScheduler

from sqr.config import LazyCall as L
from sqr.engine.lr_scheduler import LRSchedule


def multistep_schedule(
    num_updates: int, milestones: list[int], warmup_iters: int = 0, gamma: float = 0.1
):
    """lr x gamma at each milestone; milestones and num_updates share a unit (epochs or iters)."""
    return L(LRSchedule)(
        scheduler=L(MultiStepParamScheduler)(
            values=[gamma**i for i in range(len(milestones) + 1)],
            milestones=list(milestones),
            num_updates=num_updates,
        ),
        warmup_iters=warmup_iters,
        warmup_factor=0.001,
    )


# DETR-family recipes: 50 epochs, lr x0.1 at epoch 40, no warmup (detrex coco_schedule.py).
lr_multiplier_50ep = multistep_schedule(50, [40])
# DINO's 12 epochs: lr x0.1 at epoch 11, no warmup (detrex lr_multiplier_12ep).
lr_multiplier_12ep = multistep_schedule(12, [11])
# AdaMixer 1x: 12 epochs, drops at 8 and 11, 500 warmup iterations.
lr_multiplier_12ep_warmup = multistep_schedule(12, [8, 11], warmup_iters=500)
# AdaMixer 3x: 36 epochs, drops at 27 and 33, 500 warmup iterations.
lr_multiplier_36ep_warmup = multistep_schedule(36, [27, 33], warmup_iters=500)


def rtdetr_schedule(warmup_iters: int = 2000):
    """RT-DETR's (rtdetrv2_pytorch configs/rtdetrv2/include/optimizer.yml): LinearWarmup over
    warmup_iters iterations, lr x (i + 1) / warmup_iters at iteration i, then the full lr (its
    MultiStepLR drops at epoch 1000, after the end of every recipe)."""
    return L(LRSchedule)(
        scheduler=L(ConstantParamScheduler)(value=1.0),
        warmup_iters=warmup_iters,
        warmup_method="rtdetr",
    )


# RT-DETRv2: 2000 warm-up iterations, then constant.
lr_multiplier_rtdetr = rtdetr_schedule(2000)
