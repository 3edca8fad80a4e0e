# RT-DETRv2-M R50vd-m, 84 epochs (lyuwenyu/RT-DETR rtdetrv2_pytorch at 068dfde:
# rtdetrv2_r50vd_m_7x_coco.yml; 51.9 AP on COCO val2017 at 640x640): the R50vd recipe
# (rtdetrv2_r50vd_6x.py, its parameter groups included) with encoder expansion 0.5, evaluation
# at the third decoder layer and 84 epochs.
# Train: tools/train_net.py --num-gpus 8 --config-file projects/sqr/configs/rtdetrv2_r50vd_m_7x.py
from .models.rtdetrv2_r50vd_m import model
from .rtdetrv2_r50vd_6x import dataloader, lr_multiplier, optimizer, train

train.output_dir = "./output/rtdetrv2_r50vd_m_7x"
train.max_epochs = 84

# The strong augmentation and the multi-scale collate stop at epoch 81 of 84.
dataloader.train.mapper.augmentation.stop_epoch = 81
dataloader.train.collate_fn.stop_epoch = 81
