# RT-DETRv2-L R50vd, 72 epochs (lyuwenyu/RT-DETR rtdetrv2_pytorch at 068dfde:
# rtdetrv2_r50vd_6x_coco.yml with include/dataloader.yml and include/optimizer.yml; 53.4 AP on
# COCO val2017 at 640x640). The other RT-DETRv2 recipes start from this one, as their yml files
# start from the same includes.
# Train: tools/train_net.py --num-gpus 8 --config-file projects/sqr/configs/rtdetrv2_r50vd_6x.py
from sqr.model_zoo import get_config

from .models.rtdetrv2_r50vd import model

dataloader = get_config("common/data/coco_rtdetr.py").dataloader
optimizer = get_config("common/optim.py").AdamW
train = get_config("common/train.py").train
# LinearWarmup over 2000 iterations (lr x (i + 1) / 2000 at iteration i), then constant: the
# MultiStepLR drop at epoch 1000 comes after the end of every recipe.
lr_multiplier = get_config("common/schedule.py").lr_multiplier_rtdetr

train.output_dir = "./output/rtdetrv2_r50vd_6x"
# The backbone's ImageNet weights (RT-DETR's PResNet release, PResNet(pretrained=True)).
train.init_checkpoint = "sqr://presnet50_vd"
train.max_epochs = 72
train.max_iter = None
train.reference_total_batch_size = 16
train.amp.enabled = True
train.amp.dtype = "float16"  # torch.autocast's CUDA default, with a grad scaler
train.ema.enabled = True
train.ema.decay = 0.9999
train.ema.warmups = 2000
train.clip_grad.enabled = True
train.clip_grad.params.max_norm = 0.1
train.clip_grad.params.norm_type = 2.0

# AdamW 1e-4, betas (0.9, 0.999), weight decay 1e-4. Its parameter groups: the backbone without
# norms at lr 1e-5 ('^(?=.*backbone)(?!.*norm).*$'; its norms are frozen, so that is the whole
# trained backbone), no weight decay on the encoder's and decoder's norms
# ('^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$').
optimizer.lr = 1e-4
optimizer.betas = (0.9, 0.999)
optimizer.weight_decay = 1e-4
optimizer.params.weight_decay_norm = 0.0
optimizer.params.lr_factors = {"backbone": 0.1}

# Total batch 16; the strong augmentation and the multi-scale collate stop at epoch 71 of 72.
dataloader.train.total_batch_size = 16
dataloader.train.mapper.augmentation.stop_epoch = 71
dataloader.train.collate_fn.stop_epoch = 71
train.sync_bn = True  # runtime.yml: BatchNorm statistics over all GPUs
