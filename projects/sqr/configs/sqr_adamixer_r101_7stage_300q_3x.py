# SQR-AdaMixer R101, 300 queries, 7 stages, 3x (SQR README: 49.8 AP; the config was not
# published). Identical to the baseline but for the recollection schedule; the same rule gives
# 1, 2, 3, 5, 8, 13, 21 query groups for 7 stages (53 supervised outputs).
from .adamixer_r101_7stage_300q_3x import dataloader, lr_multiplier, model, optimizer, train

model.recollection.mode = "selective"
model.recollection.start_stage = 1
train.output_dir = "./output/sqr_adamixer_r101_7stage_300q_3x"
