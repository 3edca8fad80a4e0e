from omegaconf import OmegaConf

from sqr.config import LazyCall as L
from sqr.data import (
    DetrDatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    detr_test_augmentation,
    detr_train_augmentation,
)
from sqr.evaluation import COCOEvaluator

dataloader = OmegaConf.create()

# DETR augmentation: flip; then with p=0.5 either a multi-scale resize (short side 480..800 step 32,
# long side <= 1333) or resize to {400, 500, 600} -> random crop 384..600 -> multi-scale resize.
dataloader.train = L(build_detection_train_loader)(
    dataset="coco_2017_train",
    mapper=L(DetrDatasetMapper)(
        augmentation=L(detr_train_augmentation)(
            min_sizes=list(range(480, 801, 32)),
            max_size=1333,
            crop_resize_sizes=[400, 500, 600],
            crop_size=[384, 600],
        ),
        is_train=True,
    ),
    total_batch_size=16,
    num_workers=4,
    seed="${train.seed}",
)

dataloader.test = L(build_detection_test_loader)(
    dataset="coco_2017_val",
    mapper=L(DetrDatasetMapper)(
        augmentation=L(detr_test_augmentation)(short_size=800, max_size=1333),
        is_train=False,
    ),
    num_workers=4,
)

dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset}",
    output_dir="${train.output_dir}",
)
