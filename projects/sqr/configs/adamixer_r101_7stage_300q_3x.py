# AdaMixer R101, 300 queries, 7 stages, 3x (36 epochs) with DETR's multi-scale + crop augmentation:
# mmdet's adamixer_r101_300_query_crop_mstrain_480-800_3x_coco.py, which in the SQR fork inherits
# num_stages=7 from its edited adamixer_r50_1x_coco.py.
from sqr.model_zoo import get_config

from .adamixer_r50_1x import model, optimizer, train

dataloader = get_config("common/data/coco_detr.py").dataloader
lr_multiplier = get_config("common/schedule.py").lr_multiplier_36ep_warmup
# The 300-query crop recipe drops the lr after epochs 24 and 33 (not 27 and 33).
lr_multiplier.scheduler.milestones = [24, 33]

model.backbone.depth = 101
model.decoder.num_stages = 7
model.num_queries = 300

train.init_checkpoint = "https://download.pytorch.org/models/resnet101-63fe2227.pth"
train.output_dir = "./output/adamixer_r101_7stage_300q_3x"
train.max_epochs = 36

dataloader.train.total_batch_size = 16
