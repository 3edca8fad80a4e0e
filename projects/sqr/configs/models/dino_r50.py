# DINO R50 4-scale as detrex builds it (projects/dino/configs/models/dino_r50.py at e244e6c):
# C3-C5 plus a stride-64 level (GroupNorm, convolutions with bias), 6 + 6 deformable layers
# (8 heads, 4 levels, 4 points, FFN 2048, no dropout), 900 queries from mixed query selection,
# contrastive denoising, a box head per layer (look forward twice) plus one for the encoder
# proposals. SQR configs change only the recollection schedule.
from sqr.config import LazyCall as L
from sqr.layers.position_encoding import PositionEmbeddingSine
from sqr.modeling.backbone import ResNet
from sqr.modeling.criterion import SetCriterion
from sqr.modeling.decoders import DinoDecoder
from sqr.modeling.denoising import ContrastiveDenoising
from sqr.modeling.detectors import DINO
from sqr.modeling.encoders import DeformableDetrEncoder
from sqr.modeling.matcher import HungarianMatcher
from sqr.modeling.neck import ChannelMapper
from sqr.modeling.sqr import Recollection

model = L(DINO)(
    # detectron2's freeze_at=1: only the stem is frozen; FrozenBN everywhere.
    backbone=L(ResNet)(
        depth=50, out_features=["res3", "res4", "res5"], freeze_at=1, norm="FrozenBN"
    ),
    in_features=["res3", "res4", "res5"],
    neck=L(ChannelMapper)(
        in_channels=[512, 1024, 2048],
        out_channels="${..embed_dim}",
        num_extra_levels=1,  # stride 64 from C5
        num_groups=32,
        bias=True,  # detrex's ChannelMapper convolutions have biases
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
        feedforward_dim=2048,
        dropout=0.0,
    ),
    decoder=L(DinoDecoder)(
        num_stages=6,
        embed_dim="${..embed_dim}",
        num_heads=8,
        num_levels="${..encoder.num_levels}",
        num_points=4,
        feedforward_dim=2048,
        dropout=0.0,
        inverse_sigmoid_eps="${..inverse_sigmoid_eps}",
        # Denoising queries stay in the plain chain: they supervise the chain's refinement from
        # noised ground truth (DINO's own use), and recollecting them would multiply the
        # denoising loss by the group count (32 with SQR) and the decoder's work on them with it.
        recollect_denoising=False,
        checkpoint_recollected=False,
    ),
    # detrex dn_number=100, label_noise_ratio=0.5, box_noise_scale=1.0.
    denoising=L(ContrastiveDenoising)(
        num_classes="${..num_classes}",
        embed_dim="${..embed_dim}",
        num_denoising=100,
        label_noise_ratio=0.5,
        box_noise_scale=1.0,
        inverse_sigmoid_eps="${..inverse_sigmoid_eps}",
    ),
    # detrex: focal loss 1, L1 5, GIoU 2 for every term (matched, _enc, _dn); matching costs
    # 2 / 5 / 2 with focal alpha 0.25, gamma 2; GIoU with eps 1e-6 (the defaults).
    criterion=L(SetCriterion)(
        num_classes="${..num_classes}",
        matcher=L(HungarianMatcher)(
            cost_class=2.0,
            cost_bbox=5.0,
            cost_giou=2.0,
            focal_eps=1e-8,  # detrex's FocalLossCost: log(p + 1e-8)
        ),
        weight_dict={"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0},
    ),
    # The baseline; SQR configs set mode="selective". The stage count comes from the decoder.
    recollection=L(Recollection)(mode="none"),
    num_classes=80,
    num_queries=900,
    embed_dim=256,
    select_box_nums_for_evaluation=300,
    inverse_sigmoid_eps=1e-3,  # detrex's inverse_sigmoid
    # Deformable-attention sampling: "auto" (Triton on CUDA where it runs, else PyTorch), "triton"
    # or "pytorch"; None: $SQR_MSDA, else "auto" (sqr.layers.ms_deform_attn.resolve_backend).
    msda_backend=None,
)
