"""detrex DINO checkpoints -> sqr, on the key set written out in helpers/dino_keys.py from
detrex's modules (not from the converter)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.dino_keys import detrex_dino_state

from sqr.config import LazyConfig, instantiate
from sqr.model_zoo import CHECKPOINTS
from sqr.modeling.converters import ConversionError, convert, detect_format, is_native
from sqr.tools import convert_checkpoint

CONFIGS = Path(__file__).resolve().parents[2] / "projects/sqr/configs"


class Filler:
    """Tensors of a given shape, each filled with its own value (every tensor distinguishable);
    ``small=True`` makes one-element tensors for tests that ignore shapes."""

    def __init__(self, small: bool = False) -> None:
        self.count = 0
        self.small = small

    def __call__(self, *shape: int) -> torch.Tensor:
        self.count += 1
        return torch.full((1,) if self.small else shape, float(self.count))


@pytest.mark.parametrize("config", ["dino_r50_4scale_12ep.py", "sqr_dino_r50_4scale_12ep.py"])
def test_loads_strictly_into_our_model(config: str) -> None:
    state = detrex_dino_state(Filler())
    assert detect_format(state) == "detrex_dino"
    converted = convert(state, "detrex_dino")
    model = instantiate(LazyConfig.load(str(CONFIGS / config)).model)
    result = model.load_state_dict(converted, strict=True)  # also checks every shape
    assert not result.missing_keys and not result.unexpected_keys
    assert is_native(converted) and not is_native(state)

    assert len(state) - len(converted) == 7 * (2 + 6)  # the decoder's copies of the 7 heads
    pairs = {
        "backbone.layer4.0.downsample.1.running_var": "backbone.res5.0.shortcut.norm.running_var",
        "neck.extra_convs.0.conv.bias": "neck.extra_convs.0.conv.bias",
        "level_embeds": "transformer.level_embeds",
        "query_selection.content.weight": "transformer.tgt_embed.weight",
        "query_selection.enc_output_norm.bias": "transformer.enc_output_norm.bias",
        "encoder.layers.2.self_attn.sampling_offsets.weight": (
            "transformer.encoder.layers.2.attentions.0.sampling_offsets.weight"
        ),
        "encoder.layers.4.norm2.bias": "transformer.encoder.layers.4.norms.1.bias",
        "decoder.layers.1.self_attn.in_proj_weight": (
            "transformer.decoder.layers.1.attentions.0.attn.in_proj_weight"
        ),
        "decoder.layers.3.cross_attn.value_proj.bias": (
            "transformer.decoder.layers.3.attentions.1.value_proj.bias"
        ),
        "decoder.layers.5.norm3.weight": "transformer.decoder.layers.5.norms.2.weight",
        "decoder.layers.0.ffn.linear1.weight": (
            "transformer.decoder.layers.0.ffns.0.layers.0.0.weight"
        ),
        "decoder.ref_point_head.layers.0.weight": (
            "transformer.decoder.ref_point_head.layers.0.weight"
        ),
        "decoder.norm.weight": "transformer.decoder.norm.weight",
        "class_embed.6.bias": "class_embed.6.bias",
        "bbox_embed.3.layers.2.weight": "bbox_embed.3.layers.2.weight",
        "denoising.label_enc.weight": "label_enc.weight",
    }
    for ours, theirs in pairs.items():
        assert converted[ours] is state[theirs], ours


@pytest.mark.parametrize(
    "key",
    ["transformer.decoder.class_embed.6.bias", "transformer.decoder.bbox_embed.2.layers.0.weight"],
)
def test_decoder_head_that_differs_is_named(key: str) -> None:
    state = detrex_dino_state(Filler(small=True))
    state[key] = state[key] + 1
    with pytest.raises(ConversionError, match="should equal") as info:
        convert(state, "detrex_dino")
    assert info.value.key == key


@pytest.mark.parametrize(
    "bad_key",
    [
        "transformer.reference_points.weight",  # Deformable-DETR's, not DINO's
        "transformer.pos_trans.weight",  # two-stage Deformable-DETR's query projection
        "transformer.encoder.post_norm_layer.weight",  # post_norm=False in DINO
        "transformer.decoder.ref_point_head.layers.2.weight",  # a 2-layer MLP
        "bbox_embed.0.layers.3.weight",  # the box MLP has 3 Linears
        "query_embedding.weight",
        "backbone.res6.0.conv1.weight",
    ],
)
def test_unknown_key_is_named(bad_key: str) -> None:
    state = detrex_dino_state(Filler(small=True))
    state[bad_key] = torch.zeros(1)
    with pytest.raises(ConversionError, match="no conversion rule") as info:
        convert(state, "detrex_dino")
    assert info.value.key == bad_key


def test_detect_format_tells_dino_from_deformable_refinement() -> None:
    # DINO has level_embeds and decoder head lists like two-stage Deformable-DETR: its
    # denoising label embedding and learnt query content tell them apart.
    state = detrex_dino_state(Filler(small=True))
    assert detect_format(state) == "detrex_dino"
    del state["label_enc.weight"]
    assert detect_format(state) == "detrex_dino"
    del state["transformer.tgt_embed.weight"]
    assert detect_format(state) == "detrex_deformable_detr_refine"


def test_tool_auto_converts_detrex_file(tmp_path: Path) -> None:
    src, dst = tmp_path / "dino_r50_4scale_12ep_49_2AP.pth", tmp_path / "out.pth"
    torch.save({"model": detrex_dino_state(Filler(small=True))}, src)
    assert convert_checkpoint.main(["--format", "auto", str(src), str(dst)]) == 0
    data = torch.load(dst, weights_only=True)
    assert data["__converted_from__"] == "detrex_dino"
    assert "denoising.label_enc.weight" in data["model"]
    assert "transformer.decoder.class_embed.6.weight" not in data["model"]


def test_model_zoo_entry() -> None:
    entry = CHECKPOINTS["dino_r50_4scale_12ep"]
    assert entry.url == (
        "https://github.com/IDEA-Research/detrex-storage/releases/download/v0.2.0/"
        "dino_r50_4scale_12ep_49_2AP.pth"
    )
    assert entry.sha256 is None and entry.filename == "dino_r50_4scale_12ep_49_2AP.pth"
