# SQR-AdaMixer R50, 100 queries, 6 stages, 1x (SQR README: 44.5 AP). Identical to the baseline but
# for the recollection schedule: from stage 1 on, every stage also decodes the outputs of the
# stage before the previous one, giving 1, 2, 3, 5, 8, 13 query groups per stage (32 supervised
# outputs instead of 6). Inference is the plain decoder.
from .adamixer_r50_1x import dataloader, lr_multiplier, model, optimizer, train

model.recollection.mode = "selective"
model.recollection.start_stage = 1
train.output_dir = "./output/sqr_adamixer_r50_1x"
