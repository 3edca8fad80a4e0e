# The synthetic shapes dataset (generated on first use under $DETECTRON2_DATASETS) with the DETR
# augmentation scaled to its 112..160 px images, for the quickstart and the tests.
from .coco_detr import dataloader

dataloader.train.dataset = "synthetic_shapes_train"
dataloader.train.mapper.augmentation.min_sizes = list(range(96, 161, 16))
dataloader.train.mapper.augmentation.max_size = 256
dataloader.train.mapper.augmentation.crop_resize_sizes = [96, 112, 128]
dataloader.train.mapper.augmentation.crop_size = [64, 112]
dataloader.train.total_batch_size = 8
dataloader.train.num_workers = 0

dataloader.test.dataset = "synthetic_shapes_val"
dataloader.test.mapper.augmentation.short_size = 128
dataloader.test.mapper.augmentation.max_size = 256
dataloader.test.num_workers = 0
