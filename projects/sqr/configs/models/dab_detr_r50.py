# DAB-DETR R50 as detrex builds it (detrex projects/dab_detr, which
# projects/sqr_detr/configs/models/dab_detr_r50_sqr.py uses): res5 only, 300 anchor queries,
# 6 + 6 layers, PReLU FFNs, shared heads. The recollection schedule is the only thing SQR
# configs change.
from sqr.config import LazyCall as L
from sqr.layers.position_encoding import PositionEmbeddingSine
from sqr.modeling.backbone import ResNet
from sqr.modeling.criterion import SetCriterion
from sqr.modeling.decoders import DabDetrDecoder
from sqr.modeling.detectors import DABDETR
from sqr.modeling.encoders import DabDetrEncoder
from sqr.modeling.matcher import HungarianMatcher
from sqr.modeling.sqr import Recollection

model = L(DABDETR)(
    backbone=L(ResNet)(depth=50, out_features=["res5"], freeze_at=1, norm="FrozenBN"),
    in_feature="res5",
    in_channels=2048,
    position_embedding=L(PositionEmbeddingSine)(num_feats=128, temperature=20, normalize=True),
    encoder=L(DabDetrEncoder)(
        num_layers=6,
        embed_dim="${..embed_dim}",
        num_heads=8,
        feedforward_dim=2048,
        dropout=0.0,
        activation="prelu",
    ),
    decoder=L(DabDetrDecoder)(
        num_stages=6,
        embed_dim="${..embed_dim}",
        num_heads=8,
        feedforward_dim=2048,
        dropout=0.0,
        activation="prelu",
        inverse_sigmoid_eps=1e-3,
        checkpoint_recollected=False,
    ),
    criterion=L(SetCriterion)(
        num_classes="${..num_classes}",
        matcher=L(HungarianMatcher)(
            cost_class=2.0,
            cost_bbox=5.0,
            cost_giou=2.0,
            giou_eps="${..giou_eps}",
            focal_eps=1e-8,  # detrex's FocalLossCost: log(p + 1e-8)
        ),
        weight_dict={"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0},
        giou_eps=1e-6,  # detrex's box_ops adds it to the union and the hull (normalised boxes)
    ),
    # The baseline; SQR configs set mode="selective". The stage count comes from the decoder.
    recollection=L(Recollection)(mode="none"),
    num_classes=80,
    num_queries=300,
    embed_dim=256,
    select_box_nums_for_evaluation=300,
    inverse_sigmoid_eps=1e-3,
)
