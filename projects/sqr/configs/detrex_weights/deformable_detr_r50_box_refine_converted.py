# The original Deformable-DETR R50 + box refinement weights as detrex converted them
# (sqr://deformable_detr_r50_box_refine_converted; 46.28 box AP in detrex, top-300), evaluated
# the way detrex evaluates them. Same overrides as deformable_detr_r50_converted.py.
from ..deformable_detr_refine_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.neck.bias = True  # the original input projections have biases (mmdet's have none)
# detrex: all-zero eval padding mask, top-300, detector_postprocess's empty-box filter.
model.mask_padding_in_eval = False
model.select_box_nums_for_evaluation = 300
model.drop_empty_boxes = True
train.init_checkpoint = "sqr://deformable_detr_r50_box_refine_converted"
train.output_dir = "./output/detrex_weights/deformable_detr_r50_box_refine_converted"
