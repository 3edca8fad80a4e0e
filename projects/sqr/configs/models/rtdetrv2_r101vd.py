# RT-DETRv2-X, R101vd (rtdetrv2_pytorch at 068dfde: rtdetrv2_r101vd_6x_coco.yml over
# include/rtdetrv2_r50vd.yml): PResNet-101vd, an encoder 384 channels wide with a 2048-channel
# AIFI FFN, whose levels the decoder's input projections bring to its 256 channels
# (feat_channels [384, 384, 384]).
from .rtdetrv2_r50vd import model

model.backbone.depth = 101
model.encoder.hidden_dim = 384
model.encoder.dim_feedforward = 2048
model.feat_channels = "${.encoder.hidden_dim}"
