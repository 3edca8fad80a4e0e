# The original Deformable-DETR R50 weights as detrex converted them
# (sqr://deformable_detr_r50_converted; 44.59 box AP in detrex, top-300), evaluated the way detrex
# evaluates them:
#   tools/train_net.py --eval-only \
#       --config-file projects/sqr/configs/detrex_weights/deformable_detr_r50_converted.py
# Only what the weights and detrex's evaluation need differs from the SQR recipe's model.
from ..deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

model.neck.bias = True  # the original input projections have biases (mmdet's have none)
# detrex (projects/deformable_detr at e244e6c): an all-zero padding mask in evaluation, the 300
# highest query-class scores, and detectron2's detector_postprocess, which drops the boxes that
# clipping to the image empties.
model.mask_padding_in_eval = False
model.select_box_nums_for_evaluation = 300
model.drop_empty_boxes = True
train.init_checkpoint = "sqr://deformable_detr_r50_converted"
train.output_dir = "./output/detrex_weights/deformable_detr_r50_converted"
