# AdaMixer R50, 100 queries, 6 stages, 1x (12 epochs), single scale (AdaMixer paper: 42.7 AP).
# Train: tools/train_net.py --config-file projects/sqr/configs/adamixer_r50_1x.py --num-gpus 8
from sqr.model_zoo import get_config

from .models.adamixer_r50 import model

dataloader = get_config("common/data/coco_1x.py").dataloader
optimizer = get_config("common/optim.py").AdamW
lr_multiplier = get_config("common/schedule.py").lr_multiplier_12ep_warmup
train = get_config("common/train.py").train

# mmdet's torchvision://resnet50, the ImageNet weights the reference starts from.
train.init_checkpoint = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
train.output_dir = "./output/adamixer_r50_1x"
# 12 epochs at total batch 16 (8 GPUs x 2); lr x0.1 after epochs 8 and 11, 500 warmup iterations.
train.max_iter = None
train.max_epochs = 12
train.reference_total_batch_size = 16
train.clip_grad.enabled = True
train.clip_grad.params.max_norm = 1.0
train.clip_grad.params.norm_type = 2.0

# AdamW 2.5e-5, weight decay 1e-4 on every parameter (mmdet has no paramwise rules here) and no
# learning-rate factors.
optimizer.lr = 2.5e-5
optimizer.weight_decay = 1e-4
optimizer.params.weight_decay_norm = "${..weight_decay}"
optimizer.params.lr_factors = {}

dataloader.train.total_batch_size = 16
