# DINO R50 4-scale, 12 epochs, run by detrex's own tools/train_net.py (see the README, "Inside
# detrex"). The recipe is ../dino_r50_4scale_12ep.py (detrex projects/dino) in detrex's common
# configs.
#   python tools/train_net.py --num-gpus 8 \
#       --config-file /path/to/sqr/projects/sqr/configs/detrex/dino_r50_4scale_12ep.py
from detectron2.config import LazyCall as L
from detrex.config import get_config

from sqr.integrations.detectron2 import Detectron2Adapter, lr_factors_by_name

from ..models.dino_r50 import model as detector

# sqr detectors take RGB; the adapter converts from what the loader gives (detrex's
# DetrDatasetMapper: img_format="RGB"), read from the loader so that the two cannot disagree.
model = L(Detectron2Adapter)(
    detector=detector, input_format="${dataloader.train.mapper.img_format}"
)

dataloader = get_config("common/data/coco_detr.py").dataloader
optimizer = get_config("common/optim.py").AdamW
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_12ep  # x0.1 at epoch 11
train = get_config("common/train.py").train

# sqr's ResNet has torchvision names, which detectron2's checkpointer cannot map from
# detectron2's R-50.pkl: convert it once (path relative to where train_net.py runs):
#   sqr-convert --format detectron2_resnet sqr://R-50 weights/R-50_sqr.pth
train.init_checkpoint = "weights/R-50_sqr.pth"
train.output_dir = "./output/detrex/dino_r50_4scale_12ep"
# detrex's "12ep": 90k iterations at total batch 16 (7.5k per epoch).
train.max_iter = 12 * 7500
train.clip_grad.enabled = True
train.clip_grad.params.max_norm = 0.1
train.clip_grad.params.norm_type = 2.0
train.checkpointer.period = 5000
train.eval_period = 5000

# AdamW 1e-4, weight decay 1e-4 (0 on norms: detrex's weight_decay_norm), backbone lr x0.1.
optimizer.lr = 1e-4
optimizer.weight_decay = 1e-4
optimizer.params.lr_factor_func = L(lr_factors_by_name)(factors={"backbone": 0.1})

dataloader.train.total_batch_size = 16
dataloader.evaluator.output_dir = "${train.output_dir}"  # COCO results json
