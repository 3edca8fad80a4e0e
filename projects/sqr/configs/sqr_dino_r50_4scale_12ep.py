# SQR-DINO R50 4-scale, 12 epochs. Identical to the baseline but for the recollection schedule:
# from stage 1 on, every stage also decodes the outputs of the stage before the previous one,
# giving 1, 2, 3, 5, 8, 13 query groups per stage (32 supervised outputs instead of 6), each
# with its own references. The denoising queries stay in the plain chain (the decoder's
# recollect_denoising=False, see models/dino_r50.py): recollected groups are matching queries
# only. Inference is the plain decoder.
from .dino_r50_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

model.recollection.mode = "selective"
model.recollection.start_stage = 1
train.output_dir = "./output/sqr_dino_r50_4scale_12ep"
