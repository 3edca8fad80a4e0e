# SQR-Deformable-DETR R50, 50 epochs (SQR release; 45.8 box AP on COCO val2017).
# Identical to the baseline but for the recollection schedule: from stage 1 on, every stage also
# decodes the outputs of the stage before the previous one, giving 1, 2, 3, 5, 8, 13 query groups
# per stage (32 supervised outputs instead of 6). Inference is the plain decoder.
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.recollection.mode = "selective"
model.recollection.start_stage = 1
train.output_dir = "./output/sqr_deformable_detr_r50_50ep"
