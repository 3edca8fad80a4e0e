# Deformable-DETR R50, 50 epochs, the recipe of the SQR release (Fangyi-Chen/SQR
# configs/sqr/deformable_detr_SQR_r50_50e_coco.py, mmdet 2.12;
# SQR-Deformable-DETR reaches 45.8 box AP on COCO val2017 with it).
# Train: tools/train_net.py --num-gpus 8 \
#     --config-file projects/sqr/configs/deformable_detr_r50_50ep.py
from sqr.model_zoo import get_config

from .models.deformable_detr_r50 import model

dataloader = get_config("common/data/coco_detr.py").dataloader
optimizer = get_config("common/optim.py").AdamW
lr_multiplier = get_config("common/schedule.py").lr_multiplier_50ep  # x0.1 at epoch 40
train = get_config("common/train.py").train

# mmdet's torchvision://resnet50 is the same ImageNet model as this detectron2 conversion.
train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.output_dir = "./output/deformable_detr_r50_50ep"
train.max_iter = None
train.max_epochs = 50
# 8 GPUs x 4 images, as the SQR author recommends (SQR issue #2).
train.reference_total_batch_size = 32
train.clip_grad.enabled = True
train.clip_grad.params.max_norm = 0.1
train.clip_grad.params.norm_type = 2.0
train.checkpointer.period = 5000
train.eval_period = 5000

# AdamW 2e-4, weight decay 1e-4 on every parameter (mmdet exempts no norm layers), lr x0.1 for
# the backbone, the sampling offsets and the reference-point projection (mmdet custom_keys).
optimizer.lr = 2e-4
optimizer.weight_decay = 1e-4
optimizer.params.weight_decay_norm = "${..weight_decay}"
optimizer.params.lr_factors = {"backbone": 0.1, "sampling_offsets": 0.1, "reference_points": 0.1}

dataloader.train.total_batch_size = 32
