# Two-stage Deformable-DETR R50 (with box refinement, as published), 50 epochs: the 300 encoder
# proposals scoring highest give the decoder its initial boxes and queries; the proposals get
# class-agnostic losses (loss_*_enc). Same recipe otherwise.
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.with_box_refine = True
model.as_two_stage = True
train.output_dir = "./output/deformable_detr_two_stage_r50_50ep"
