# AdaMixer R50, 100 queries, 6 stages, 1x (12 epochs), single scale, run by detrex's own
# tools/train_net.py (see the README, "Inside detrex"). The recipe is ../adamixer_r50_1x.py
# (mmdet's) in detrex's and detectron2's common configs.
#   python tools/train_net.py --num-gpus 8 \
#       --config-file /path/to/sqr/projects/sqr/configs/detrex/adamixer_r50_1x.py
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from detrex.config import get_config
from fvcore.common.param_scheduler import MultiStepParamScheduler

from sqr.integrations.detectron2 import Detectron2Adapter

from ..models.adamixer_r50 import model as detector

# sqr detectors take RGB; the adapter converts from what the loader gives (detrex's
# DetrDatasetMapper: img_format="RGB"), read from the loader so that the two cannot disagree.
model = L(Detectron2Adapter)(
    detector=detector, input_format="${dataloader.train.mapper.img_format}"
)

# mmdet's 1x pipeline: flip and resize to 800 x 1333, no crop branch (detrex's DETR mapper takes
# one when augmentation_with_crop is set).
dataloader = get_config("common/data/coco_detr.py").dataloader
dataloader.train.mapper.augmentation = [
    L(T.RandomFlip)(),
    L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333),
]
dataloader.train.mapper.augmentation_with_crop = None
optimizer = get_config("common/optim.py").AdamW
train = get_config("common/train.py").train

# 12 detrex epochs (7.5k iterations at total batch 16 each, 8 GPUs x 2).
train.max_iter = 12 * 7500
# lr x0.1 after epochs 8 and 11 (fvcore's schedulers are scale-invariant: milestones in epochs),
# linear warmup over 500 iterations from 0.001 (mmdet's), as a fraction of training.
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[8, 11], num_updates=12
    ),
    warmup_length=500 / train.max_iter,
    warmup_method="linear",
    warmup_factor=0.001,
)

# mmdet's torchvision://resnet50 in sqr's names, converted once (path relative to where
# train_net.py runs):
#   sqr-convert --format torchvision_resnet \
#       https://download.pytorch.org/models/resnet50-0676ba61.pth weights/R-50_torchvision_sqr.pth
train.init_checkpoint = "weights/R-50_torchvision_sqr.pth"
train.output_dir = "./output/detrex/adamixer_r50_1x"
train.clip_grad.enabled = True
train.clip_grad.params.max_norm = 1.0
train.clip_grad.params.norm_type = 2.0
train.checkpointer.period = 7500
train.eval_period = 7500

# AdamW 2.5e-5, weight decay 1e-4 on every parameter (mmdet has no paramwise rules here) and no
# learning-rate factors.
optimizer.lr = 2.5e-5
optimizer.weight_decay = 1e-4
optimizer.params.weight_decay_norm = "${..weight_decay}"

dataloader.train.total_batch_size = 16
dataloader.evaluator.output_dir = "${train.output_dir}"  # COCO results json
