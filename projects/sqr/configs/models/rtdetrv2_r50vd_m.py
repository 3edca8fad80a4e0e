# RT-DETRv2-M, R50vd (rtdetrv2_pytorch at 068dfde: rtdetrv2_r50vd_m_7x_coco.yml over
# include/rtdetrv2_r50vd.yml): the R50vd model with encoder expansion 0.5, evaluated at its
# third decoder layer (eval_idx 2; training supervises all 6).
from .rtdetrv2_r50vd import model

model.encoder.expansion = 0.5
model.decoder.eval_idx = 2
