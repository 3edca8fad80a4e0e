# SQR two-stage Deformable-DETR R50, 50 epochs. Identical to the two-stage baseline but for the
# recollection schedule (1, 2, 3, 5, 8, 13 groups per stage, each with its own references).
from .deformable_detr_two_stage_r50_50ep import (
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
)

model.recollection.mode = "selective"
model.recollection.start_stage = 1
train.output_dir = "./output/sqr_deformable_detr_two_stage_r50_50ep"
