"""Every detector the project ships, declared once.

The tools (``sqr-gpu-check``), the converters' list of native modules and the tests' contract
suite (``tests/contract/``) read this table; adding a detector is adding an entry. An entry names
an SQR recipe under ``projects/sqr/configs``; its baseline is the same recipe with
:data:`BASELINE`, and the recipe's ``sqr_``-less twin file is that baseline written out.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The override that turns SQR off: the plain decoder, one query group per stage.
BASELINE = "model.recollection.mode=none"

#: Formats that convert a backbone only (any detector's ``backbone.``), not a whole detector.
BACKBONE_FORMATS = ("detectron2_resnet", "rtdetr_presnet", "torchvision_resnet")

_BACKBONE18 = ("model.backbone.depth=18", "model.backbone.norm=BN", "model.backbone.freeze_at=0")
_HEADS = ("model.num_queries=10", "model.select_box_nums_for_evaluation=10", "model.num_classes=5")
_DEFORMABLE = (
    *_BACKBONE18,
    "model.neck.in_channels=[128, 256, 512]",
    "model.neck.num_groups=8",
    "model.embed_dim=32",
    "model.position_embedding.num_feats=16",
    "model.encoder.num_layers=2",
    "model.encoder.num_heads=4",
    "model.encoder.num_points=2",
    "model.encoder.feedforward_dim=64",
    "model.decoder.num_heads=4",
    "model.decoder.num_points=2",
    "model.decoder.feedforward_dim=64",
)

# Test size: ResNet-18, 32 channels, small FFNs and 10 queries; the decoder depth stays the
# recipe's (SQR's schedule depends on it).
TINY_DAB_DETR = (
    *_BACKBONE18,
    "model.in_channels=512",
    "model.embed_dim=32",
    "model.position_embedding.num_feats=16",
    "model.encoder.num_layers=2",
    "model.encoder.num_heads=4",
    "model.encoder.feedforward_dim=64",
    "model.decoder.num_heads=4",
    "model.decoder.feedforward_dim=64",
    *_HEADS,
)
TINY_DEFORMABLE_DETR = (*_DEFORMABLE, *_HEADS)
TINY_ADAMIXER = (
    *_BACKBONE18,
    "model.neck.in_channels=[64, 128, 256, 512]",
    "model.neck.num_groups=8",
    "model.embed_dim=32",
    "model.decoder.feat_channels=32",
    "model.decoder.num_heads=4",
    "model.decoder.feedforward_dim=64",
    "model.decoder.num_sampling_groups=2",
    "model.decoder.in_points=4",
    "model.decoder.out_points=8",
    "model.num_queries=10",
    "model.num_classes=5",
)
TINY_DINO = (*_DEFORMABLE, "model.denoising.num_denoising=4", *_HEADS)

TINY_RTDETRV2 = (
    "model.backbone.width=16",
    "model.encoder.in_channels=[32, 64, 128]",
    "model.embed_dim=32",
    "model.encoder.num_heads=4",
    "model.encoder.dim_feedforward=64",
    "model.decoder.num_heads=4",
    "model.decoder.num_points=[2, 2, 2]",
    "model.decoder.feedforward_dim=64",
    "model.denoising.num_denoising=4",
    *_HEADS,
)

# The BottleNeck depths (R50, R101) at the test width: stages of 4 x 16 x 2**i channels.
_TINY_RTDETRV2_BOTTLENECK = tuple(
    "model.encoder.in_channels=[128, 256, 512]" if o.startswith("model.encoder.in_channels") else o
    for o in TINY_RTDETRV2
)

_NO_DROPOUT = ("model.encoder.dropout=0.0", "model.decoder.dropout=0.0")
_DEFORMABLE_MODULES = frozenset(
    {"backbone", "neck", "level_embeds", "encoder", "decoder", "class_embed", "bbox_embed"}
)


@dataclass(frozen=True)
class Variant:
    """Another SQR recipe of an entry's detector: another depth or schedule of the same code.

    The contract suite runs on the entry's own recipe; the config checks and the checkpoint
    formats' round trips run on each variant too.

    Attributes:
        config: its SQR config under ``projects/sqr/configs`` (the baseline: without ``sqr_``).
        tiny: overrides that shrink it to test size.
    """

    config: str
    tiny: tuple[str, ...]

    @property
    def baseline_config(self) -> str:
        """The recipe's baseline twin: the same file name without ``sqr_``."""
        return self.config.removeprefix("sqr_")


@dataclass(frozen=True)
class DetectorEntry:
    """One detector recipe.

    Attributes:
        name: how reports and test ids name it.
        config: its SQR config, a file name under ``projects/sqr/configs``.
        family: the architecture ("dab_detr", "deformable_detr", "adamixer", "dino",
            "rtdetrv2"): the
            recipes of one family share their layers (and, for the GPU check, their kernels).
        tiny: overrides that shrink it to test size (same code paths).
        no_dropout: overrides that turn its dropout off (empty where the recipe has none), for
            checks that compare two runs of a training step.
        formats: keys of :data:`sqr.modeling.converters.CONVERTERS` whose checkpoints convert
            to the whole detector (backbone-only formats: :data:`BACKBONE_FORMATS`).
        native_modules: the top-level modules of its ``state_dict``.
        batch_statistics: its training features of an image depend on the rest of the batch
            (BatchNorm in training after the backbone, as in RT-DETRv2's HybridEncoder), so
            two ranks with one image each cannot reproduce one process's gradients on both:
            multi-process checks then ask only that the ranks step together.
        variants: its other recipes (:class:`Variant`).
    """

    name: str
    config: str
    family: str
    tiny: tuple[str, ...]
    native_modules: frozenset[str]
    no_dropout: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    batch_statistics: bool = False
    variants: tuple[Variant, ...] = ()

    @property
    def baseline_config(self) -> str:
        """The recipe's baseline twin: the same file name without ``sqr_``."""
        return self.config.removeprefix("sqr_")


DETECTORS: tuple[DetectorEntry, ...] = (
    DetectorEntry(
        name="DAB-DETR",
        config="sqr_dab_detr_r50_50ep.py",
        family="dab_detr",
        tiny=TINY_DAB_DETR,
        native_modules=frozenset(
            {"backbone", "input_proj", "encoder", "decoder", "anchor_box_embed"}
            | {"class_embed", "bbox_embed"}
        ),
        formats=("detrex_dab_detr",),
    ),
    DetectorEntry(
        name="Deformable-DETR",
        config="sqr_deformable_detr_r50_50ep.py",
        family="deformable_detr",
        tiny=TINY_DEFORMABLE_DETR,
        native_modules=_DEFORMABLE_MODULES | {"query_embedding", "reference_points"},
        no_dropout=_NO_DROPOUT,
        formats=("detrex_deformable_detr", "mmdet_deformable_detr"),
    ),
    DetectorEntry(
        name="Deformable-DETR refine",
        config="sqr_deformable_detr_refine_r50_50ep.py",
        family="deformable_detr",
        tiny=TINY_DEFORMABLE_DETR,
        native_modules=_DEFORMABLE_MODULES | {"query_embedding", "reference_points"},
        no_dropout=_NO_DROPOUT,
        formats=("detrex_deformable_detr_refine", "mmdet_deformable_detr_refine"),
    ),
    DetectorEntry(
        name="Deformable-DETR two-stage",
        config="sqr_deformable_detr_two_stage_r50_50ep.py",
        family="deformable_detr",
        tiny=TINY_DEFORMABLE_DETR,
        native_modules=_DEFORMABLE_MODULES | {"proposals"},
        no_dropout=_NO_DROPOUT,
        # Two-stage keeps per-layer heads: the refinement formats carry it.
        formats=("detrex_deformable_detr_refine", "mmdet_deformable_detr_refine"),
    ),
    DetectorEntry(
        name="AdaMixer",
        config="sqr_adamixer_r50_1x.py",
        family="adamixer",
        tiny=TINY_ADAMIXER,
        native_modules=frozenset({"backbone", "neck", "query_generator", "decoder"}),
        # sqr_legacy: sqr's own AdaMixer checkpoints from when its stages were "stages".
        formats=("mmdet_adamixer", "sqr_legacy"),
    ),
    DetectorEntry(
        name="AdaMixer R101 7-stage",
        config="sqr_adamixer_r101_7stage_300q_3x.py",
        family="adamixer",
        tiny=TINY_ADAMIXER,
        native_modules=frozenset({"backbone", "neck", "query_generator", "decoder"}),
        # sqr_legacy: sqr's own AdaMixer checkpoints from when its stages were "stages".
        formats=("mmdet_adamixer", "sqr_legacy"),
    ),
    DetectorEntry(
        name="DINO",
        config="sqr_dino_r50_4scale_12ep.py",
        family="dino",
        tiny=TINY_DINO,
        native_modules=_DEFORMABLE_MODULES | {"query_selection", "denoising"},
        formats=("detrex_dino",),
    ),
    DetectorEntry(
        name="RT-DETRv2-S R18vd",
        config="sqr_rtdetrv2_r18vd_120e.py",
        family="rtdetrv2",
        tiny=TINY_RTDETRV2,
        native_modules=frozenset(
            {"backbone", "encoder", "input_proj", "query_selection", "decoder", "denoising"}
            | {"class_embed", "bbox_embed"}
        ),
        formats=("rtdetrv2",),
        batch_statistics=True,
        variants=(
            Variant("sqr_rtdetrv2_r34vd_120e.py", TINY_RTDETRV2),
            Variant("sqr_rtdetrv2_r50vd_m_7x.py", _TINY_RTDETRV2_BOTTLENECK),
            Variant("sqr_rtdetrv2_r50vd_6x.py", _TINY_RTDETRV2_BOTTLENECK),
            # A wider encoder than decoder, as RT-DETRv2-X's.
            Variant(
                "sqr_rtdetrv2_r101vd_6x.py",
                (*_TINY_RTDETRV2_BOTTLENECK, "model.encoder.hidden_dim=48"),
            ),
        ),
    ),
)


def entry(name: str) -> DetectorEntry:
    """The entry called ``name`` (raises KeyError listing the names otherwise)."""
    for detector in DETECTORS:
        if detector.name == name:
            return detector
    raise KeyError(f"no detector {name!r}; the table has {[d.name for d in DETECTORS]}")


def native_modules() -> frozenset[str]:
    """The top-level modules of any detector in the table."""
    return frozenset().union(*(d.native_modules for d in DETECTORS))
