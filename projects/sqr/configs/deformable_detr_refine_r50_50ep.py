# Deformable-DETR R50 with iterative box refinement, 50 epochs: every decoder layer has its own
# heads and refines the references of the next (detached between layers). Same recipe otherwise.
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.with_box_refine = True
train.output_dir = "./output/deformable_detr_refine_r50_50ep"
