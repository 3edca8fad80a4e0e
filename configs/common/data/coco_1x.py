# mmdet's single-scale "1x" COCO pipeline (AdaMixer, Sparse R-CNN): flip, resize so that the short
# side is 800 unless the long side would pass 1333; the same resize at test time. Padding to a
# multiple of 32 is the model's job (AdaMixer.size_divisibility).
from .coco_detr import dataloader

dataloader.train.mapper.augmentation.min_sizes = [800]
dataloader.train.mapper.augmentation.max_size = 1333
dataloader.train.mapper.augmentation.crop_size = None  # no crop branch: flip + resize only
