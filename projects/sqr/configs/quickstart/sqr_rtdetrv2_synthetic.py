# Quickstart: SQR-RT-DETRv2 on the synthetic shapes dataset, trained from scratch on a CPU in the
# DAB quickstart's time, then evaluated with COCO AP. Same code as the R18vd recipe at toy scale:
#   python tools/train_net.py \
#       --config-file projects/sqr/configs/quickstart/sqr_rtdetrv2_synthetic.py
from sqr.model_zoo import get_config

from ..models.rtdetrv2_r18vd import model

dataloader = get_config("common/data/coco_rtdetr.py").dataloader
optimizer = get_config("common/optim.py").AdamW
lr_multiplier = get_config("common/schedule.py").lr_multiplier_50ep
train = get_config("common/train.py").train

# A PResNet-18vd at half width trained from scratch (strides 8/16/32: 12/6/3 px maps at 96 px).
model.backbone.width = 32
model.encoder.in_channels = [64, 128, 256]
# A narrow transformer; the decoder keeps its 3 stages so that recollection has depth.
model.embed_dim = 64  # the encoder and decoder follow
model.encoder.num_heads = 4
model.encoder.dim_feedforward = 128
model.decoder.num_heads = 4
model.decoder.feedforward_dim = 128
model.num_queries = 20  # at most 8 objects per image
model.select_box_nums_for_evaluation = 20
model.num_classes = 4  # circle, square, triangle, cross
# RT-DETR's 100 denoising queries make 12 groups for 8 objects; 3 groups here.
model.denoising.num_denoising = 24
model.recollection.mode = "selective"
model.recollection.start_stage = 1

# RT-DETR's pipeline at a toy size: images resized to 96x96 for training and evaluation, the
# model dividing pixels by 255 itself (RTDETRv2's pixel_mean 0, pixel_std 255). The strong ops
# (photometric distort, zoom-out, IoU crop) and the multi-scale collate are off from epoch 0,
# leaving the flip: as for the DAB quickstart, a mild augmentation for a short run on 512 images.
dataloader.train.dataset = "synthetic_shapes_train"
dataloader.train.mapper.augmentation.size = 96
dataloader.train.mapper.augmentation.stop_epoch = 0
dataloader.train.collate_fn.stop_epoch = 0
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 0
dataloader.test.dataset = "synthetic_shapes_val"
dataloader.test.mapper.augmentation.size = 96
dataloader.test.num_workers = 0

# AdamW at 5x RT-DETR's learning rate, the backbone (from random weights) at the full rate as
# in the R18vd recipe.
optimizer.lr = 5e-4
optimizer.params.lr_factors = {}
lr_multiplier.warmup_iters = 100

train.output_dir = "./output/quickstart/sqr_rtdetrv2_synthetic"
# 2000 iterations: the DAB quickstart's 2200 in CPU time (a step here costs 1.1x one of its).
train.max_iter = 2000
train.eval_period = 2000
train.checkpointer.period = 1000
train.log_period = 100
