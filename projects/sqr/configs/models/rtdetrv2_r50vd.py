# RT-DETRv2-L, R50vd, as lyuwenyu/RT-DETR builds it (rtdetrv2_pytorch at 068dfde:
# configs/rtdetrv2/include/rtdetrv2_r50vd.yml, the model every RT-DETRv2 recipe starts from):
# PResNet-50vd (stem frozen, FrozenBatchNorm), HybridEncoder on strides 8/16/32 (AIFI on the last,
# expansion 1.0), 6 decoder layers (8 heads, 4 points per level, FFN 1024, no dropout), 300
# queries selected from the encoder tokens, 100 denoising queries, varifocal class loss. The
# other depths (models/rtdetrv2_r18vd.py, ...) override it as their yml files do; SQR configs
# change only the recollection schedule.
from sqr.config import LazyCall as L
from sqr.modeling.backbone import PResNet
from sqr.modeling.criterion import SetCriterion
from sqr.modeling.decoders.rtdetrv2 import RTDETRv2Decoder
from sqr.modeling.detectors.rtdetrv2 import RTDETRDenoising, RTDETRv2
from sqr.modeling.losses import VarifocalClassLoss
from sqr.modeling.matcher import HungarianMatcher
from sqr.modeling.neck import HybridEncoder
from sqr.modeling.sqr import Recollection

model = L(RTDETRv2)(
    # freeze_at=0: the stem is frozen; every norm is a FrozenBatchNorm2d.
    backbone=L(PResNet)(depth=50, return_idx=[1, 2, 3], freeze_at=0, freeze_norm=True, width=64),
    encoder=L(HybridEncoder)(
        in_channels=[512, 1024, 2048],
        feat_strides=[8, 16, 32],
        hidden_dim="${..embed_dim}",
        num_heads=8,
        dim_feedforward=1024,
        dropout=0.0,
        encoder_activation="gelu",
        use_encoder_idx=[2],
        num_encoder_layers=1,
        expansion=1.0,
        depth_mult=1.0,
        activation="silu",
        in_features=["res3", "res4", "res5"],
    ),
    decoder=L(RTDETRv2Decoder)(
        num_stages=6,
        embed_dim="${..embed_dim}",
        num_heads=8,
        num_levels=3,
        num_points=[4, 4, 4],
        feedforward_dim=1024,
        dropout=0.0,
        cross_attn_method="default",  # or "discrete"
        eval_idx=-1,  # evaluation runs layers 0..eval_idx
        inverse_sigmoid_eps="${..inverse_sigmoid_eps}",
        # Denoising queries stay in the plain chain, as SQR-DINO's.
        recollect_denoising=False,
        checkpoint_recollected=False,
    ),
    denoising=L(RTDETRDenoising)(
        num_classes="${..num_classes}",
        embed_dim="${..embed_dim}",
        num_denoising=100,
        label_noise_ratio=0.5,
        box_noise_scale=1.0,
        inverse_sigmoid_eps="${..inverse_sigmoid_eps}",
        sync_free_label_noise=True,  # RT-DETR draws a label for every copy
    ),
    # RTDETRCriterionv2: vfl 1 (alpha 0.75, gamma 2), L1 5, GIoU 2 on every set; matching costs
    # class 2 (focal, alpha 0.25, gamma 2) / L1 5 / GIoU 2; GIoU without eps.
    criterion=L(SetCriterion)(
        num_classes="${..num_classes}",
        matcher=L(HungarianMatcher)(
            cost_class=2.0,
            cost_bbox=5.0,
            cost_giou=2.0,
            focal_alpha=0.25,
            focal_gamma=2.0,
            giou_eps=0.0,
            focal_eps=1e-8,
        ),
        weight_dict={"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0},
        giou_eps=0.0,
        losses={"loss_class": L(VarifocalClassLoss)(alpha=0.75, gamma=2.0)},
    ),
    # The baseline; SQR configs set mode="selective". The stage count comes from the decoder.
    recollection=L(Recollection)(mode="none"),
    num_classes=80,
    num_queries=300,
    embed_dim=256,
    query_select_method="default",  # or "agnostic"
    learn_query_content=False,
    select_box_nums_for_evaluation=300,
    inverse_sigmoid_eps=1e-5,
    msda_backend=None,
)
