# RT-DETRv2-S, R18vd (rtdetrv2_pytorch at 068dfde: rtdetrv2_r18vd_120e_coco.yml over
# include/rtdetrv2_r50vd.yml): PResNet-18vd with nothing frozen and BatchNorm, the encoder on
# its 128/256/512 channels with expansion 0.5, 3 decoder layers.
from .rtdetrv2_r50vd import model

model.backbone.depth = 18
model.backbone.freeze_at = -1
model.backbone.freeze_norm = False
model.encoder.in_channels = [128, 256, 512]
model.encoder.expansion = 0.5
model.decoder.num_stages = 3
