# SQR-Deformable-DETR R50, 50 epochs, in detrex (recipe: ../sqr_deformable_detr_r50_50ep.py).
# Identical to the baseline but for the recollection schedule: 1, 2, 3, 5, 8, 13 query groups
# per stage in training; inference is the plain decoder.
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.detector.recollection.mode = "selective"
model.detector.recollection.start_stage = 1
train.output_dir = "./output/detrex/sqr_deformable_detr_r50_50ep"
