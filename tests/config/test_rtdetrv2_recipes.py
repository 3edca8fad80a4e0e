"""The RT-DETRv2 recipes hold the official hyper-parameters (lyuwenyu/RT-DETR rtdetrv2_pytorch at
068dfde, configs/rtdetrv2/*.yml, written out below), their optimizer groups are what the official
parameter-group regexes select, and each SQR twin is its baseline with selective recollection."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sqr.config import LazyConfig, instantiate
from sqr.engine.defaults import check_optimizer_options
from sqr.modeling.table import TINY_RTDETRV2

CONFIGS = Path(__file__).resolve().parents[2] / "projects/sqr/configs"

# From the yml files: include/rtdetrv2_r50vd.yml, include/optimizer.yml, include/dataloader.yml
# and each recipe's overrides.
OFFICIAL = {
    "rtdetrv2_r18vd_120e": dict(
        depth=18,
        freeze_at=-1,
        freeze_norm=False,
        in_channels=[128, 256, 512],
        expansion=0.5,
        num_layers=3,
        eval_idx=-1,
        epochs=120,
        transforms_stop=117,
        collate_stop=0,
        backbone="sqr://presnet18_vd",
    ),
    "rtdetrv2_r34vd_120e": dict(
        depth=34,
        freeze_at=-1,
        freeze_norm=False,
        in_channels=[128, 256, 512],
        expansion=0.5,
        num_layers=4,
        eval_idx=-1,
        epochs=120,
        transforms_stop=117,
        collate_stop=117,
        backbone="sqr://presnet34_vd",
    ),
    "rtdetrv2_r50vd_m_7x": dict(
        depth=50,
        freeze_at=0,
        freeze_norm=True,
        in_channels=[512, 1024, 2048],
        expansion=0.5,
        num_layers=6,
        eval_idx=2,
        epochs=84,
        transforms_stop=81,
        collate_stop=81,
        backbone="sqr://presnet50_vd",
    ),
    "rtdetrv2_r50vd_6x": dict(
        depth=50,
        freeze_at=0,
        freeze_norm=True,
        in_channels=[512, 1024, 2048],
        expansion=1.0,
        num_layers=6,
        eval_idx=-1,
        epochs=72,
        transforms_stop=71,
        collate_stop=71,
        backbone="sqr://presnet50_vd",
    ),
    "rtdetrv2_r101vd_6x": dict(
        depth=101,
        freeze_at=0,
        freeze_norm=True,
        in_channels=[512, 1024, 2048],
        expansion=1.0,
        num_layers=6,
        eval_idx=-1,
        epochs=72,
        transforms_stop=71,
        collate_stop=71,
        backbone="sqr://presnet101_vd",
        encoder_hidden=384,
        encoder_ffn=2048,
    ),
}
# The optimizer's `params` lists: (regex over the official parameter names, group options).
# r18vd replaces the base list with its one group; r50vd_m and r50vd restate the base list.
BASE_GROUPS = [
    (r"^(?=.*backbone)(?!.*norm).*$", {"lr": 1e-5}),
    (r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$", {"weight_decay": 0.0}),
]
OFFICIAL_GROUPS = {
    "rtdetrv2_r18vd_120e": [(r"^(?=.*(?:norm|bn)).*$", {"weight_decay": 0.0})],
    "rtdetrv2_r34vd_120e": [
        (r"^(?=.*backbone)(?!.*norm|bn).*$", {"lr": 5e-5}),
        (r"^(?=.*backbone)(?=.*norm|bn).*$", {"lr": 5e-5, "weight_decay": 0.0}),
        (r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn|bias)).*$", {"weight_decay": 0.0}),
    ],
    "rtdetrv2_r50vd_m_7x": BASE_GROUPS,
    "rtdetrv2_r50vd_6x": BASE_GROUPS,
    "rtdetrv2_r101vd_6x": [
        (r"^(?=.*backbone)(?!.*norm|bn).*$", {"lr": 1e-6}),
        BASE_GROUPS[1],
    ],
}
RECIPES = sorted(OFFICIAL)
# The width-16 test backbone's res3..res5 channels (BasicBlock x1, BottleNeck x4).
TINY_IN_CHANNELS = {18: [32, 64, 128], 34: [32, 64, 128], 50: [128, 256, 512]}
TINY_IN_CHANNELS[101] = TINY_IN_CHANNELS[50]


def load(name: str):
    return LazyConfig.load(str(CONFIGS / f"{name}.py"))


def test_every_rtdetrv2_recipe_is_checked() -> None:
    baselines = {p.stem for p in CONFIGS.glob("rtdetrv2_*.py")}
    assert baselines == set(RECIPES)
    assert {p.stem for p in CONFIGS.glob("sqr_rtdetrv2_*.py")} == {f"sqr_{r}" for r in RECIPES}


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_has_the_official_hyper_parameters(name: str) -> None:
    cfg, official = load(name), OFFICIAL[name]
    backbone, encoder, decoder = cfg.model.backbone, cfg.model.encoder, cfg.model.decoder
    assert (backbone.depth, backbone.freeze_at, backbone.freeze_norm) == (
        official["depth"],
        official["freeze_at"],
        official["freeze_norm"],
    )
    assert list(backbone.return_idx) == [1, 2, 3] and backbone.width == 64
    assert list(encoder.in_channels) == official["in_channels"]
    assert (encoder.expansion, encoder.depth_mult) == (official["expansion"], 1.0)
    assert cfg.model.embed_dim == 256  # the decoder's hidden_dim
    # HybridEncoder's hidden_dim, the decoder's feat_channels (None: the same as its own).
    encoder_hidden = official.get("encoder_hidden", 256)
    assert encoder.hidden_dim == encoder_hidden
    assert (cfg.model.get("feat_channels") or 256) == encoder_hidden
    encoder_ffn = official.get("encoder_ffn", 1024)
    assert (encoder.dim_feedforward, encoder.num_heads, encoder.dropout) == (encoder_ffn, 8, 0.0)
    assert list(encoder.use_encoder_idx) == [2] and encoder.num_encoder_layers == 1
    assert (encoder.encoder_activation, encoder.activation) == ("gelu", "silu")
    assert (decoder.num_stages, decoder.eval_idx) == (official["num_layers"], official["eval_idx"])
    assert list(decoder.num_points) == [4, 4, 4] and decoder.cross_attn_method == "default"
    assert (decoder.feedforward_dim, decoder.num_heads, decoder.dropout) == (1024, 8, 0.0)
    assert (cfg.model.num_queries, cfg.model.query_select_method) == (300, "default")
    assert cfg.model.denoising.num_denoising == 100
    assert cfg.model.recollection.mode == "none"

    train = cfg.train
    assert train.init_checkpoint == official["backbone"]
    assert train.sync_bn  # runtime.yml
    assert (train.max_epochs, train.max_iter) == (official["epochs"], None)
    assert train.amp.enabled and train.amp.dtype == "float16"
    assert train.ema.enabled and (train.ema.decay, train.ema.warmups) == (0.9999, 2000)
    assert train.clip_grad.enabled and train.clip_grad.params.max_norm == 0.1
    assert train.clip_grad.params.norm_type == 2.0
    assert (cfg.optimizer.lr, tuple(cfg.optimizer.betas), cfg.optimizer.weight_decay) == (
        1e-4,
        (0.9, 0.999),
        1e-4,
    )
    assert cfg.lr_multiplier.warmup_iters == 2000 and cfg.lr_multiplier.warmup_method == "rtdetr"

    data = cfg.dataloader.train
    assert (data.total_batch_size, data.num_workers) == (16, 4)
    assert data.mapper.augmentation.stop_epoch == official["transforms_stop"]
    assert data.mapper.augmentation.size == 640
    assert data.collate_fn.stop_epoch == official["collate_stop"]
    assert list(data.collate_fn.scales) == [*range(480, 609, 32), 640, 640, *range(640, 801, 32)]


def tiny_model(cfg, depth: int) -> torch.nn.Module:
    overrides = [o for o in TINY_RTDETRV2 if not o.startswith("model.encoder.in_channels=")]
    LazyConfig.apply_overrides(
        cfg, [*overrides, f"model.encoder.in_channels={TINY_IN_CHANNELS[depth]}"]
    )
    torch.manual_seed(0)
    return instantiate(cfg.model)


def official_name(name: str) -> str:
    """The official module tree has three children; the query selection heads, the input
    projections, the per-layer heads and the denoising embedding, which sqr's detector holds
    itself, are the official decoder's. Below that the names differ, but as the regexes read
    them (norm, bn, bias) they agree: every norm here is named *norm*."""
    return name if name.split(".")[0] in ("backbone", "encoder", "decoder") else f"decoder.{name}"


@pytest.mark.parametrize("name", RECIPES)
def test_optimizer_groups_are_the_official_regexes(name: str) -> None:
    cfg = load(name)
    model = tiny_model(cfg, OFFICIAL[name]["depth"])
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    built = {
        id(p): (group["lr"], group["weight_decay"])
        for group in optimizer.param_groups
        for p in group["params"]
    }
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(built) == len(trained)
    lrs = set()
    for param_name, param in trained:
        matches = [
            options
            for pattern, options in OFFICIAL_GROUPS[name]
            if re.findall(pattern, official_name(param_name))
        ]
        assert len(matches) <= 1, param_name  # the official groups are disjoint
        options = {"lr": 1e-4, "weight_decay": 1e-4, **(matches[0] if matches else {})}
        assert built[id(param)] == pytest.approx((options["lr"], options["weight_decay"])), (
            param_name
        )
        lrs.add(options["lr"])
    assert len(lrs) == (1 if name == "rtdetrv2_r18vd_120e" else 2)
    if OFFICIAL[name]["freeze_at"] == 0:  # the stem is frozen and not optimised
        assert not any(p.requires_grad for p in model.backbone.stem.parameters())


@pytest.mark.parametrize("name", RECIPES)
def test_sqr_twin_is_the_baseline_with_selective_recollection(name: str) -> None:
    baseline, twin = load(name), load(f"sqr_{name}")
    baseline.model.recollection.mode = "selective"
    baseline.model.recollection.start_stage = 1
    baseline.train.output_dir = f"./output/sqr_{name}"
    assert OmegaConf.to_container(twin) == OmegaConf.to_container(baseline)


def test_weight_decay_bias_is_checked_by_name() -> None:
    cfg = load("rtdetrv2_r34vd_120e")
    check_optimizer_options(cfg)
    cfg.optimizer.params.weight_decay_bias = "none"
    with pytest.raises(ValueError, match=r"optimizer\.params\.weight_decay_bias .*'none'"):
        check_optimizer_options(cfg)
