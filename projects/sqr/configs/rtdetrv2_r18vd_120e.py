# RT-DETRv2-S R18vd, 120 epochs (lyuwenyu/RT-DETR rtdetrv2_r18vd_120e_coco.yml; 48.1 AP on
# COCO val2017 at 640x640).
# Train: tools/train_net.py --num-gpus 8 --config-file projects/sqr/configs/rtdetrv2_r18vd_120e.py
# Not yet the full official recipe: the backbone's ImageNet weights (RT-DETR's PResNet18vd
# release) need the checkpoint converter, and the warm-up starts at 0.001 x lr where RT-DETR's
# LinearWarmup starts at 1/2000.
from sqr.model_zoo import get_config

from .models.rtdetrv2_r18vd import model

dataloader = get_config("common/data/coco_rtdetr.py").dataloader
optimizer = get_config("common/optim.py").AdamW
train = get_config("common/train.py").train
# MultiStepLR at epoch 1000: no drop within 120 epochs; linear warm-up over 2000 iterations.
lr_multiplier = get_config("common/schedule.py").lr_multiplier_12ep
lr_multiplier.scheduler.values = [1.0]
lr_multiplier.scheduler.milestones = []
lr_multiplier.scheduler.num_updates = 120
lr_multiplier.warmup_iters = 2000

train.output_dir = "./output/rtdetrv2_r18vd_120e"
train.max_epochs = 120
train.max_iter = None
train.reference_total_batch_size = 16
train.amp.enabled = True
train.amp.dtype = "float16"
train.ema.enabled = True
train.ema.decay = 0.9999
train.ema.warmups = 2000
train.clip_grad.enabled = True
train.clip_grad.params.max_norm = 0.1
train.clip_grad.params.norm_type = 2.0

# AdamW 1e-4, weight decay 1e-4, none on norms. The r18vd recipe replaces the base recipe's
# parameter groups with the norm one only: the backbone trains at the full lr.
optimizer.lr = 1e-4
optimizer.betas = (0.9, 0.999)
optimizer.weight_decay = 1e-4
optimizer.params.lr_factors = {}

# The strong augmentation stops at epoch 117; the r18vd recipe has no multi-scale (scales: ~).
dataloader.train.total_batch_size = 16
dataloader.train.mapper.augmentation.stop_epoch = 117
dataloader.train.collate_fn.stop_epoch = 0
