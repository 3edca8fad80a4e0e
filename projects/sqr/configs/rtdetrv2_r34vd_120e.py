# RT-DETRv2-M* R34vd, 120 epochs (lyuwenyu/RT-DETR rtdetrv2_pytorch at 068dfde:
# rtdetrv2_r34vd_120e_coco.yml; 49.9 AP on COCO val2017 at 640x640): the R50vd recipe
# (rtdetrv2_r50vd_6x.py) with the yml's overrides.
# Train: tools/train_net.py --num-gpus 8 --config-file projects/sqr/configs/rtdetrv2_r34vd_120e.py
from .models.rtdetrv2_r34vd import model
from .rtdetrv2_r50vd_6x import dataloader, lr_multiplier, optimizer, train

train.output_dir = "./output/rtdetrv2_r34vd_120e"
train.init_checkpoint = "sqr://presnet34_vd"
train.max_epochs = 120

# The yml's parameter groups: the backbone at lr 5e-5, its norms without weight decay
# ('^(?=.*backbone)(?!.*norm|bn).*$', '^(?=.*backbone)(?=.*norm|bn).*$'); no weight decay on
# the encoder's and decoder's norms and biases
# ('^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn|bias)).*$'; the backbone's convolutions have no
# bias, so that is every bias).
optimizer.params.lr_factors = {"backbone": 0.5}
optimizer.params.weight_decay_bias = 0.0

# The strong augmentation and the multi-scale collate stop at epoch 117 of 120.
dataloader.train.mapper.augmentation.stop_epoch = 117
dataloader.train.collate_fn.stop_epoch = 117
