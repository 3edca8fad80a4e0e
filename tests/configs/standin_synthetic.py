# The stand-in detector on the synthetic shapes data: a complete training config for engine tests.
from helpers.standin import StandInDetector

from sqr.config import LazyCall as L
from sqr.model_zoo import get_config

dataloader = get_config("common/data/synthetic_detr.py").dataloader
optimizer = get_config("common/optim.py").AdamW
lr_multiplier = get_config("common/schedule.py").lr_multiplier_50ep
train = get_config("common/train.py").train

model = L(StandInDetector)(num_classes=4, dropout=0.1)

dataloader.train.total_batch_size = 4
optimizer.lr = 1e-3
train.device = "cpu"
train.max_iter = 8
train.checkpointer.period = 4
train.eval_period = 0
train.log_period = 2
train.clip_grad.enabled = True
