# RT-DETRv2-X R101vd, 72 epochs (lyuwenyu/RT-DETR rtdetrv2_pytorch at 068dfde:
# rtdetrv2_r101vd_6x_coco.yml; 54.3 AP on COCO val2017 at 640x640): the R50vd recipe
# (rtdetrv2_r50vd_6x.py) with the R101vd model and the backbone at lr 1e-6.
# Train: tools/train_net.py --num-gpus 8 --config-file projects/sqr/configs/rtdetrv2_r101vd_6x.py
from .models.rtdetrv2_r101vd import model
from .rtdetrv2_r50vd_6x import dataloader, lr_multiplier, optimizer, train

train.output_dir = "./output/rtdetrv2_r101vd_6x"
train.init_checkpoint = "sqr://presnet101_vd"
# '^(?=.*backbone)(?!.*norm|bn).*$' at lr 1e-6: x0.01 of the base 1e-4 (its norms are frozen).
optimizer.params.lr_factors = {"backbone": 0.01}
