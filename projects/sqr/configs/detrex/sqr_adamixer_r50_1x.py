# SQR-AdaMixer R50, 100 queries, 6 stages, 1x, in detrex (recipe: ../sqr_adamixer_r50_1x.py):
# the baseline with the selective recollection schedule (1, 2, 3, 5, 8, 13 query groups per stage
# in training). Inference is the plain decoder.
from .adamixer_r50_1x import dataloader, lr_multiplier, model, optimizer, train

model.detector.recollection.mode = "selective"
model.detector.recollection.start_stage = 1
train.output_dir = "./output/detrex/sqr_adamixer_r50_1x"
