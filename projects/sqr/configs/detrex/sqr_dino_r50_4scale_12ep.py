# SQR-DINO R50 4-scale, 12 epochs, in detrex (recipe: ../sqr_dino_r50_4scale_12ep.py): the
# baseline with the selective recollection schedule (1, 2, 3, 5, 8, 13 query groups per stage in
# training; the denoising queries stay in the plain chain). Inference is the plain decoder.
from .dino_r50_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

model.detector.recollection.mode = "selective"
model.detector.recollection.start_stage = 1
train.output_dir = "./output/detrex/sqr_dino_r50_4scale_12ep"
