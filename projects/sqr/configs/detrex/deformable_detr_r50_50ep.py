# Deformable-DETR R50, 50 epochs, run by detrex's own tools/train_net.py (see the README, "Inside
# detrex"). The recipe is ../deformable_detr_r50_50ep.py (the SQR release's, mmdet 2.12) in
# detrex's common configs; the data pipeline is detrex's DETR one (coco_detr.py).
#   python tools/train_net.py --num-gpus 8 \
#       --config-file /path/to/sqr/projects/sqr/configs/detrex/deformable_detr_r50_50ep.py
from detectron2.config import LazyCall as L
from detrex.config import get_config

from sqr.integrations.detectron2 import Detectron2Adapter, lr_factors_by_name

from ..models.deformable_detr_r50 import model as detector

# sqr detectors take RGB; the adapter converts from what the loader gives (detrex's
# DetrDatasetMapper: img_format="RGB"), read from the loader so that the two cannot disagree.
model = L(Detectron2Adapter)(
    detector=detector, input_format="${dataloader.train.mapper.img_format}"
)

dataloader = get_config("common/data/coco_detr.py").dataloader
optimizer = get_config("common/optim.py").AdamW
# x0.1 at 80% of training (epoch 40 of 50); detectron2's schedulers are scale-invariant.
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_50ep
train = get_config("common/train.py").train

# sqr's ResNet has torchvision names, which detectron2's checkpointer cannot map from
# detectron2's R-50.pkl: convert it once (path relative to where train_net.py runs):
#   sqr-convert --format detectron2_resnet sqr://R-50 weights/R-50_sqr.pth
train.init_checkpoint = "weights/R-50_sqr.pth"
train.output_dir = "./output/detrex/deformable_detr_r50_50ep"
# 50 detrex epochs (7.5k iterations at total batch 16 each) at total batch 32 (8 GPUs x 4, as the
# SQR author recommends, SQR issue #2): half as many iterations.
train.max_iter = 50 * 7500 * 16 // 32
train.clip_grad.enabled = True
train.clip_grad.params.max_norm = 0.1
train.clip_grad.params.norm_type = 2.0
train.checkpointer.period = 5000
train.eval_period = 5000

# AdamW 2e-4, weight decay 1e-4 on every parameter (mmdet exempts no norm layers), lr x0.1 for
# the backbone, the sampling offsets and the reference-point projection (mmdet custom_keys).
optimizer.lr = 2e-4
optimizer.weight_decay = 1e-4
optimizer.params.weight_decay_norm = "${..weight_decay}"
optimizer.params.lr_factor_func = L(lr_factors_by_name)(
    factors={"backbone": 0.1, "sampling_offsets": 0.1, "reference_points": 0.1}
)

dataloader.train.total_batch_size = 32
dataloader.evaluator.output_dir = "${train.output_dir}"  # COCO results json
