# SQR-Deformable-DETR R50 with iterative box refinement, 50 epochs. Identical to the refine
# baseline but for the recollection schedule (1, 2, 3, 5, 8, 13 groups per stage); every group
# carries its own references, which the reference implementation does not do.
from .deformable_detr_refine_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.recollection.mode = "selective"
model.recollection.start_stage = 1
train.output_dir = "./output/sqr_deformable_detr_refine_r50_50ep"
