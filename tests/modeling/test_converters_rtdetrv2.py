"""Official RT-DETRv2 checkpoints: recognised, converted, and loaded by the engine (the published
files' ``model`` and ``ema`` entries), the ImageNet PResNet files under ``backbone.``, and every
published checkpoint in the model zoo. Key sets come from the official modules
(tests/helpers/rtdetrv2_keys.py); the full-size round trip of each recipe is in
tests/contract/test_converters.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.detectors import build_detector
from helpers.rtdetrv2_keys import OfficialRTDETRv2, official_presnet_shapes, official_rtdetrv2_state

from sqr.engine.checkpoint import DetectionCheckpointer, load_trained_weights
from sqr.model_zoo.checkpoints import CHECKPOINTS
from sqr.modeling.converters import ConversionError, convert, detect_format, is_native
from sqr.modeling.table import entry

CONFIGS = Path(__file__).resolve().parents[2] / "projects" / "sqr" / "configs"
ENTRY = entry("RT-DETRv2-S R18vd")
# The tiny detector with the official backbone width, so that the official key set fits it.
OVERRIDES = [*ENTRY.tiny, "model.backbone.width=64", "model.encoder.in_channels=[128, 256, 512]"]
TINY = OfficialRTDETRv2(
    hidden_dim=32,
    encoder_ffn=64,
    num_points=(2, 2, 2),
    decoder_ffn=64,
    nhead=4,
    num_classes=5,
)


def random_maker(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.rand(shape, generator=generator)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_detector(CONFIGS / ENTRY.baseline_config, OVERRIDES).eval()


def test_official_keys_are_recognised_and_not_native() -> None:
    state = official_rtdetrv2_state(random_maker(0), TINY)
    assert detect_format(state) == "rtdetrv2"
    assert not is_native(state)  # its top-level modules are named as ours
    assert is_native(convert(state, "rtdetrv2"))
    bare = {k: torch.zeros(s) for k, s in official_presnet_shapes(50, batch_norm=False).items()}
    assert detect_format(bare) == "rtdetr_presnet"


def test_the_denoising_padding_row_is_cut_and_checked() -> None:
    state = official_rtdetrv2_state(random_maker(0), TINY)
    embed = state["decoder.denoising_class_embed.weight"]
    converted = convert(state, "rtdetrv2")
    assert converted["denoising.label_enc.weight"].shape == (TINY.num_classes, TINY.hidden_dim)
    assert torch.equal(converted["denoising.label_enc.weight"], embed[: TINY.num_classes])
    embed[-1, 3] = 0.5  # a trained padding row is not RT-DETRv2's
    with pytest.raises(ConversionError, match="decoder.denoising_class_embed.weight"):
        convert(state, "rtdetrv2")


def test_an_unknown_official_key_is_named() -> None:
    state = official_rtdetrv2_state(random_maker(0), TINY)
    state["decoder.decoder.layers.0.cross_attn.value_norm.weight"] = torch.zeros(32)
    with pytest.raises(ConversionError, match="cross_attn.value_norm.weight"):
        convert(state, "rtdetrv2")


def test_a_published_file_evaluates_its_ema_weights(model, tmp_path: Path) -> None:
    trained = official_rtdetrv2_state(random_maker(1), TINY)
    averaged = official_rtdetrv2_state(random_maker(2), TINY)
    path = tmp_path / "rtdetrv2_r18vd_120e_coco.pth"
    # The official solver's layout: EMA as {"module", "updates"} next to the trained weights.
    torch.save({"model": trained, "ema": {"module": averaged, "updates": 7}}, path)

    report = load_trained_weights(model, str(path), purpose="--eval-only", weights="ema")
    assert report.complete
    state = model.state_dict()
    pairs = {
        "class_embed.2.bias": "decoder.dec_score_head.2.bias",
        "decoder.layers.1.ffn.linear2.weight": "decoder.decoder.layers.1.linear2.weight",
        "decoder.layers.0.cross_attn.sampling_offsets.weight": (
            "decoder.decoder.layers.0.cross_attn.sampling_offsets.weight"
        ),
        "query_selection.enc_output_norm.weight": "decoder.enc_output.norm.weight",
        "query_selection.box_head.layers.2.bias": "decoder.enc_bbox_head.layers.2.bias",
        "input_proj.1.norm.running_var": "decoder.input_proj.1.norm.running_var",
        "encoder.aifi.0.0.linear1.weight": "encoder.encoder.0.layers.0.linear1.weight",
        "encoder.pan_blocks.1.blocks.2.conv1x1.conv.weight": (
            "encoder.pan_blocks.1.bottlenecks.2.conv2.conv.weight"
        ),
        "backbone.layer2.0.shortcut.conv.weight": (
            "backbone.res_layers.1.blocks.0.short.conv.conv.weight"
        ),
    }
    for ours, official in pairs.items():
        assert torch.equal(state[ours], averaged[official]), ours
    load_trained_weights(model, str(path), purpose="--eval-only", weights="model")
    assert torch.equal(
        model.state_dict()["class_embed.2.bias"], trained["decoder.dec_score_head.2.bias"]
    )


def test_the_imagenet_presnet_file_fills_the_backbone(model, tmp_path: Path) -> None:
    shapes = official_presnet_shapes(18, batch_norm=True)
    make = random_maker(3)
    bare = {k: make(*s) if s else torch.tensor(5) for k, s in shapes.items()}
    path = tmp_path / "ResNet18_vd_pretrained_from_paddle.pth"
    torch.save(bare, path)  # a bare state_dict, as the official release
    checkpointer = DetectionCheckpointer(model)
    checkpointer.load(str(path), checkpointables=[])
    report = checkpointer.last_report
    assert all(k.startswith("backbone.") for k in report.matched)
    assert len(report.matched) == len(bare)
    assert torch.equal(
        model.state_dict()["backbone.stem.conv2.conv.weight"], bare["conv1.conv1_2.conv.weight"]
    )
    assert not any(k.startswith("backbone.") for k in report.missing)


@pytest.mark.parametrize(
    "name",
    [
        "rtdetrv2_r18vd_120e_coco",
        "rtdetrv2_r34vd_120e_coco",
        "rtdetrv2_r50vd_m_7x_coco",
        "rtdetrv2_r50vd_6x_coco",
        "rtdetrv2_r101vd_6x_coco",
        "presnet18_vd",
        "presnet50_vd",
    ],
)
def test_published_checkpoints_are_in_the_zoo(name: str) -> None:
    zoo = CHECKPOINTS[name]
    assert zoo.url.startswith("https://github.com/lyuwenyu/storage/releases/download/")
    assert zoo.url.endswith(".pth") and zoo.filename.endswith(".pth")
