# SQR-RT-DETRv2-X R101vd, 72 epochs. Identical to the baseline but for the recollection
# schedule: from stage 1 on, every stage also decodes the outputs of the stage before the
# previous one. The denoising queries stay in the plain chain (the decoder's
# recollect_denoising=False, see models/rtdetrv2_r50vd.py). Inference is the plain decoder.
from .rtdetrv2_r101vd_6x import dataloader, lr_multiplier, model, optimizer, train

model.recollection.mode = "selective"
model.recollection.start_stage = 1
train.output_dir = "./output/sqr_rtdetrv2_r101vd_6x"
