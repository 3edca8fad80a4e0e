# DAB-DETR R50, 50 epochs (detrex projects/dab_detr; 43.3 box AP on COCO val2017).
# Train: tools/train_net.py --config-file projects/sqr/configs/dab_detr_r50_50ep.py --num-gpus 8
from sqr.model_zoo import get_config

from .models.dab_detr_r50 import model

dataloader = get_config("common/data/coco_detr.py").dataloader
optimizer = get_config("common/optim.py").AdamW
lr_multiplier = get_config("common/schedule.py").lr_multiplier_50ep
train = get_config("common/train.py").train

train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.output_dir = "./output/dab_detr_r50_50ep"
# detrex's "50ep": 375k iterations at total batch 16 (7.5k per epoch, about 51 COCO epochs);
# the lr drops at 80% of training (iteration 300k), the schedule's epoch 40 of 50.
train.max_iter = 375000
train.reference_total_batch_size = 16
train.clip_grad.enabled = True
train.clip_grad.params.max_norm = 0.1
train.clip_grad.params.norm_type = 2.0
train.checkpointer.period = 5000
train.eval_period = 5000

# AdamW 1e-4, weight decay 1e-4 (0 on norms), backbone lr x0.1 (detrex configs/common/optim.py).
optimizer.lr = 1e-4
optimizer.weight_decay = 1e-4
optimizer.params.lr_factors = {"backbone": 0.1}

dataloader.train.total_batch_size = 16
