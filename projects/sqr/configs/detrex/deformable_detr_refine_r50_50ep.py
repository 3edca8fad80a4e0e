# Deformable-DETR R50 with iterative box refinement, 50 epochs, in detrex (recipe:
# ../deformable_detr_refine_r50_50ep.py). Same recipe as the plain model otherwise.
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.detector.with_box_refine = True
train.output_dir = "./output/detrex/deformable_detr_refine_r50_50ep"
