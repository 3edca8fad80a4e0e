# SQR two-stage Deformable-DETR R50, 50 epochs, in detrex: the two-stage baseline with the
# selective recollection schedule (1, 2, 3, 5, 8, 13 query groups per stage in training).
from .deformable_detr_two_stage_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.detector.recollection.mode = "selective"
model.detector.recollection.start_stage = 1
train.output_dir = "./output/detrex/sqr_deformable_detr_two_stage_r50_50ep"
