# Deformable-DETR R50 as the SQR recipe builds it (Fangyi-Chen/SQR
# configs/sqr/deformable_detr_SQR_r50_50e_coco.py, mmdet 2.12): C3-C5 plus a
# stride-64 level (GroupNorm), 6 + 6 MSDA layers (8 heads, 4 levels, 4 points, FFN 1024, dropout
# 0.1), 300 queries with 2-d reference points, shared heads. The variants set with_box_refine /
# as_two_stage; SQR configs change only the recollection schedule.
from sqr.config import LazyCall as L
from sqr.layers.position_encoding import PositionEmbeddingSine
from sqr.modeling.backbone import ResNet
from sqr.modeling.criterion import SetCriterion
from sqr.modeling.decoders import DeformableDetrDecoder
from sqr.modeling.detectors import DeformableDETR
from sqr.modeling.encoders import DeformableDetrEncoder
from sqr.modeling.matcher import HungarianMatcher
from sqr.modeling.neck import ChannelMapper
from sqr.modeling.sqr import Recollection

model = L(DeformableDETR)(
    # mmdet frozen_stages=1 freezes the stem and layer1 (detectron2's freeze_at=2); its BN
    # layers have requires_grad=False and norm_eval=True, i.e. frozen statistics everywhere.
    backbone=L(ResNet)(
        depth=50, out_features=["res3", "res4", "res5"], freeze_at=2, norm="FrozenBN"
    ),
    in_features=["res3", "res4", "res5"],
    neck=L(ChannelMapper)(
        in_channels=[512, 1024, 2048],
        out_channels="${..embed_dim}",
        num_extra_levels=1,  # stride 64 from C5
        num_groups=32,
        bias=False,  # mmdet; True for the original Deformable-DETR weights (detrex conversions)
    ),
    position_embedding=L(PositionEmbeddingSine)(
        num_feats=128, temperature=10000, normalize=True, offset=-0.5
    ),
    encoder=L(DeformableDetrEncoder)(
        num_layers=6,
        embed_dim="${..embed_dim}",
        num_heads=8,
        num_levels=4,  # 3 backbone levels + 1 extra
        num_points=4,
        feedforward_dim=1024,
        dropout=0.1,
    ),
    decoder=L(DeformableDetrDecoder)(
        num_stages=6,
        embed_dim="${..embed_dim}",
        num_heads=8,
        num_levels="${..encoder.num_levels}",
        num_points=4,
        feedforward_dim=1024,
        dropout=0.1,
        inverse_sigmoid_eps="${..inverse_sigmoid_eps}",
        checkpoint_recollected=False,
    ),
    # mmdet: FocalLoss weight 2, L1 5, GIoU 2, and the same weights as matching costs.
    criterion=L(SetCriterion)(
        num_classes="${..num_classes}",
        matcher=L(HungarianMatcher)(
            cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, giou_eps="${..giou_eps}"
        ),
        weight_dict={"loss_class": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0},
        # mmdet's GIoU (IoUCost, GIoULoss) runs on pixel boxes and clamps union and hull at
        # 1e-6 px^2, which real boxes never reach: on our normalised boxes that is no eps.
        giou_eps=0.0,
    ),
    # The baseline; SQR configs set mode="selective". The stage count comes from the decoder.
    recollection=L(Recollection)(mode="none"),
    num_classes=80,
    num_queries=300,
    embed_dim=256,
    with_box_refine=False,
    as_two_stage=False,
    select_box_nums_for_evaluation=100,  # mmdet test_cfg max_per_img
    inverse_sigmoid_eps=1e-5,  # mmdet's inverse_sigmoid
    # mmdet masks the padding in evaluation too and keeps boxes that clipping empties; detrex's
    # weights (detrex_weights/) were evaluated with neither.
    mask_padding_in_eval=True,
    drop_empty_boxes=False,
    # Deformable-attention sampling: "auto" (Triton on CUDA where it runs, else PyTorch), "triton"
    # or "pytorch"; None: $SQR_MSDA, else "auto" (sqr.layers.ms_deform_attn.resolve_backend).
    msda_backend=None,
)
