# AdaMixer R50 as the SQR fork of mmdet builds it (Fangyi-Chen/SQR
# configs/sqr/adamixer_SQR_r50_1x_coco.py): ResNet C2-C5, 1x1 channel
# mapping with one shared GroupNorm, 100 whole-image queries, 6 stages with unshared parameters,
# focal 2 / L1 5 (normalised xyxy) / GIoU 2 for both matching and loss. The recollection
# schedule is the only thing SQR configs change.
from sqr.config import LazyCall as L
from sqr.modeling.backbone import ResNet
from sqr.modeling.criterion import SetCriterion
from sqr.modeling.decoders import AdaMixerDecoder
from sqr.modeling.detectors import AdaMixer
from sqr.modeling.matcher import HungarianMatcher
from sqr.modeling.neck import ChannelMapper
from sqr.modeling.sqr import Recollection

model = L(AdaMixer)(
    # mmdet frozen_stages=1 freezes the stem and layer1 (detectron2's freeze_at=2); it keeps the
    # BN statistics of layers 2-4 frozen (norm_eval) but trains their affine parameters.
    backbone=L(ResNet)(
        depth=50, out_features=["res2", "res3", "res4", "res5"], freeze_at=2, norm="FrozenStatsBN"
    ),
    neck=L(ChannelMapper)(
        in_features=["res2", "res3", "res4", "res5"],
        in_channels=[256, 512, 1024, 2048],
        out_channels="${..decoder.feat_channels}",
        num_extra_levels=0,
        num_groups=32,
        bias=True,  # mmdet's ConvModule without a norm of its own keeps its bias
        shared_norm=True,  # identity_fpn's one gn_out normalises every level
    ),
    decoder=L(AdaMixerDecoder)(
        num_stages=6,
        embed_dim="${..embed_dim}",
        num_heads=8,
        feedforward_dim=2048,
        num_classes="${..num_classes}",
        feat_channels=256,
        num_sampling_groups=4,
        in_points=32,
        out_points=128,
        featmap_strides=[4, 8, 16, 32],
        dropout=0.0,
        checkpoint_recollected=False,
    ),
    criterion=L(SetCriterion)(
        num_classes="${..num_classes}",
        matcher=L(HungarianMatcher)(
            cost_class=2.0,
            cost_bbox=5.0,
            cost_giou=2.0,
            l1_box_format="xyxy",
            giou_eps="${..giou_eps}",
            focal_eps=1e-12,  # mmdet's FocalLossCost: log(p + 1e-12)
        ),
        weight_dict={"loss_class": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0},
        l1_box_format="xyxy",
        # mmdet's GIoU (IoUCost, GIoULoss) runs on pixel boxes and clamps union and hull at
        # 1e-6 px^2, which real boxes never reach: on our normalised boxes that is no eps.
        giou_eps=0.0,
    ),
    # The baseline; SQR configs set mode="selective". The stage count comes from the decoder.
    recollection=L(Recollection)(mode="none"),
    num_classes=80,
    num_queries=100,
    embed_dim=256,
    size_divisibility=32,
    select_box_nums_for_evaluation="${.num_queries}",  # mmdet: max_per_img = num_query
)
