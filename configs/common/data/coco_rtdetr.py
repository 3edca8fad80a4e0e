# RT-DETR's COCO pipeline (rtdetrv2_pytorch configs/rtdetrv2/include/dataloader.yml): photometric
# distort, zoom-out, IoU crop (p=0.8), sanitize, flip, resize to 640x640 (aspect ratio not kept);
# per batch one size from 480..800 (640 three times); total batch 16. Both the strong ops and the
# multi-scale stop at epoch 71 (0-based) of the 72-epoch recipes; the 120-epoch recipes set
#   dataloader.train.mapper.augmentation.stop_epoch = 117
#   dataloader.train.collate_fn.stop_epoch = 117
# Both read the epoch each training sample carries (the epoch of its iteration, from the train
# sampler), in the loader workers as in the main process and from the first resumed iteration.
from omegaconf import OmegaConf

from sqr.config import LazyCall as L
from sqr.data import (
    DetrDatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
)
from sqr.data.rtdetr import (
    RTDETR_SCALES,
    MultiScaleCollate,
    rtdetr_test_augmentation,
    rtdetr_train_augmentation,
)
from sqr.evaluation import COCOEvaluator

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset="coco_2017_train",
    mapper=L(DetrDatasetMapper)(
        augmentation=L(rtdetr_train_augmentation)(size=640, stop_epoch=71),
        is_train=True,
    ),
    total_batch_size=16,
    num_workers=4,
    seed="${train.seed}",
    collate_fn=L(MultiScaleCollate)(
        scales=list(RTDETR_SCALES), stop_epoch=71, seed="${train.seed}"
    ),
)

dataloader.test = L(build_detection_test_loader)(
    dataset="coco_2017_val",
    mapper=L(DetrDatasetMapper)(
        augmentation=L(rtdetr_test_augmentation)(size=640),
        is_train=False,
    ),
    num_workers=4,
)

dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset}",
    output_dir="${train.output_dir}",
)
