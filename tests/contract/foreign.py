"""Foreign checkpoints of each detector format, at a recipe's full size, from the key sets the
converter tests write out from the other codebases' modules (not from the converters)."""

from __future__ import annotations

import torch
from helpers.dino_keys import detrex_dino_state
from helpers.rtdetrv2_keys import OfficialRTDETRv2, official_rtdetrv2_state
from modeling.test_converters import detrex_dab_detr_state
from modeling.test_converters_detrex_deformable import detrex_deformable_state
from modeling.test_converters_mmdet_adamixer import mmdet_adamixer_state
from modeling.test_converters_mmdet_deformable import mmdet_deformable_state
from omegaconf import DictConfig

from sqr.config import instantiate


class Filler:
    """Tensors of a given shape, each filled with its own value (every tensor distinguishable)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, *shape: int) -> torch.Tensor:
        self.count += 1
        return torch.full(shape, float(self.count))


def foreign_checkpoint(fmt: str, model: DictConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A ``fmt`` checkpoint for the recipe whose model config is ``model``, and the overrides
    that the model its weights load into needs on top of the recipe.

    The variant of a format (box refinement, two-stage, depth, stages, queries) is read from the
    recipe, so that no detector is named here.
    """
    if fmt == "detrex_dab_detr":
        return detrex_dab_detr_state(Filler()), []
    if fmt in ("detrex_deformable_detr", "detrex_deformable_detr_refine"):
        two_stage = bool(model.get("as_two_stage", False))
        variant = "two_stage" if two_stage else "refine" if fmt.endswith("_refine") else "plain"
        # detrex's ChannelMapper convolutions have biases; the recipe's, as mmdet's, none.
        return detrex_deformable_state(Filler(), variant), ["model.neck.bias=True"]
    if fmt in ("mmdet_deformable_detr", "mmdet_deformable_detr_refine"):
        two_stage = bool(model.get("as_two_stage", False))
        shared = not fmt.endswith("_refine")
        return mmdet_deformable_state(Filler(), shared_heads=shared, two_stage=two_stage), []
    if fmt == "mmdet_adamixer":
        state = mmdet_adamixer_state(
            depth=model.backbone.depth,
            num_stages=model.decoder.num_stages,
            num_queries=model.num_queries,
        )
        return state, []
    if fmt == "detrex_dino":
        return detrex_dino_state(Filler()), []
    if fmt == "rtdetrv2":
        return official_rtdetrv2_state(Filler(), official_rtdetrv2_arch(model)), []
    if fmt == "sqr_legacy":  # today's names, as sqr wrote them before decoder stages were layers
        with torch.device("meta"):
            native = instantiate(model).state_dict()
        renamed = {k.replace("decoder.layers.", "decoder.stages.", 1): v for k, v in native.items()}
        return renamed, []
    raise KeyError(f"no foreign checkpoint of format {fmt!r}: add one here")


def official_rtdetrv2_arch(model: DictConfig) -> OfficialRTDETRv2:
    """The official hyper-parameters (yml names) of the RT-DETRv2 recipe ``model``."""
    return OfficialRTDETRv2(
        depth=model.backbone.depth,
        freeze_norm=model.backbone.freeze_norm,
        in_channels=tuple(model.encoder.in_channels),
        hidden_dim=model.embed_dim,
        encoder_hidden_dim=model.encoder.hidden_dim,
        expansion=model.encoder.expansion,
        depth_mult=model.encoder.depth_mult,
        encoder_ffn=model.encoder.dim_feedforward,
        num_layers=model.decoder.num_stages,
        num_points=tuple(model.decoder.num_points),
        decoder_ffn=model.decoder.feedforward_dim,
        nhead=model.decoder.num_heads,
        num_classes=model.num_classes,
        learn_query_content=model.learn_query_content,
    )
