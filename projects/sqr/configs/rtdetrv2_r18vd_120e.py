# RT-DETRv2-S R18vd, 120 epochs (lyuwenyu/RT-DETR rtdetrv2_pytorch at 068dfde:
# rtdetrv2_r18vd_120e_coco.yml; 48.1 AP on COCO val2017 at 640x640): the R50vd recipe
# (rtdetrv2_r50vd_6x.py) with the yml's overrides.
# Train: tools/train_net.py --num-gpus 8 --config-file projects/sqr/configs/rtdetrv2_r18vd_120e.py
from .models.rtdetrv2_r18vd import model
from .rtdetrv2_r50vd_6x import dataloader, lr_multiplier, optimizer, train

train.output_dir = "./output/rtdetrv2_r18vd_120e"
train.init_checkpoint = "sqr://presnet18_vd"
train.max_epochs = 120

# The yml replaces the parameter groups with one: no weight decay on norms
# ('^(?=.*(?:norm|bn)).*$', the backbone's BatchNorms included); the backbone trains at the
# full lr.
optimizer.params.lr_factors = {}

# The strong augmentation stops at epoch 117; no multi-scale at all (the yml sets scales: ~).
dataloader.train.mapper.augmentation.stop_epoch = 117
dataloader.train.collate_fn.stop_epoch = 0
