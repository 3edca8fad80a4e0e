"""Deformable-DETR (plain, box refinement, two-stage) with SQR: group batching against a
per-group oracle, lean execution, and the model contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import detectors
from helpers.tiny import TINY_DEFORMABLE_DETR
from omegaconf import OmegaConf

from sqr.config import LazyConfig, instantiate
from sqr.model_zoo import CHECKPOINTS
from sqr.modeling.decoders.deformable import DeformableInputs

CONFIGS = Path(__file__).resolve().parents[2] / "projects/sqr/configs"
VARIANTS = {
    "plain": "sqr_deformable_detr_r50_50ep.py",
    "refine": "sqr_deformable_detr_refine_r50_50ep.py",
    "two_stage": "sqr_deformable_detr_two_stage_r50_50ep.py",
}
#: variant -> the config that evaluates detrex's conversion of the original weights (its model
#: zoo name) and the recipe config it derives from.
DETREX_WEIGHTS = {
    "plain": ("deformable_detr_r50_converted", "deformable_detr_r50_50ep.py"),
    "refine": ("deformable_detr_r50_box_refine_converted", "deformable_detr_refine_r50_50ep.py"),
    "two_stage": (
        "deformable_detr_r50_two_stage_converted",
        "deformable_detr_two_stage_r50_50ep.py",
    ),
}
# Dropout off: the oracle and the checkpointed run consume random numbers in another order.
NO_DROPOUT = ["model.encoder.dropout=0.0", "model.decoder.dropout=0.0"]
EPS = 1e-5  # the configs' inverse_sigmoid_eps


def build(variant: str, mode: str = "selective", *extra: str) -> torch.nn.Module:
    overrides = [*TINY_DEFORMABLE_DETR, *NO_DROPOUT, f"model.recollection.mode={mode}", *extra]
    return detectors.build_detector(CONFIGS / VARIANTS[variant], overrides)


def batch(with_empty: bool = True) -> list[dict]:
    second = detectors.NO_OBJECT if with_empty else detectors.ONE_OBJECT
    # The second image is narrower: padded in x.
    return detectors.detection_batch([(64, 80), (72, 56)], [detectors.TWO_OBJECTS, second])


def refined(delta: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Deformable-DETR's refinement written out: xy offset from the reference's logit, and for
    box references wh too."""
    r = reference.clamp(0, 1)
    logit = torch.log(r.clamp(min=EPS) / (1 - r).clamp(min=EPS))
    if reference.shape[-1] == 2:
        return torch.cat([delta[..., :2] + logit, delta[..., 2:]], -1).sigmoid()
    return (delta + logit).sigmoid()


def as_box(reference: torch.Tensor) -> torch.Tensor:
    """Points as boxes of side 0.5 (logit 0): how the decoder reports mixed references."""
    if reference.shape[-1] == 4:
        return reference
    return torch.cat([reference, torch.full_like(reference, 0.5)], -1)


def oracle_decode(
    decoder, content, query_pos, reference, memory, padding, shapes, ratios, bbox_embed, schedule
):
    """The schedule run one group at a time with the same layers: no batching of groups."""
    contents, references = [content], [reference]
    hidden, used = [], []
    inputs = DeformableInputs(memory, padding, shapes, ratios, bbox_embed, query_pos, reference)
    for stage in range(schedule.num_stages):
        maps = decoder.layers[stage].cross_attn.project_value(memory, shapes, padding)
        for source in schedule.sources(stage):
            if bbox_embed is None:  # static references, attached everywhere
                ref = reference
            else:  # own references, detached after the first layer
                ref = references[source] if stage == 0 else references[source].detach()
            out = decoder.decode_stage(stage, contents[source], ref, maps, inputs, 1)
            hidden.append(out)
            used.append(ref if bbox_embed is None else as_box(ref))
            contents.append(out)
            if bbox_embed is not None:
                references.append(refined(bbox_embed[stage](out), ref))
    return torch.stack(hidden), torch.stack(used)


@pytest.mark.parametrize(
    ("variant", "mode"),
    [
        ("plain", "selective"),
        ("refine", "selective"),
        ("refine", "dense"),
        ("two_stage", "selective"),
    ],
)
def test_batched_groups_equal_per_group_oracle(variant: str, mode: str) -> None:
    model = build(variant, mode)
    inputs = batch()
    losses, args, _, (hidden, references) = detectors.train_capturing_decoder(model, inputs)
    oracle_hidden, oracle_references = oracle_decode(model.decoder, *args)
    assert hidden.shape[0] == model.recollection.num_groups
    torch.testing.assert_close(hidden, oracle_hidden, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(references, oracle_references, rtol=1e-5, atol=1e-5)

    # Losses from the oracle's predictions through the same heads and criterion.
    logits, boxes = model._heads(oracle_hidden, oracle_references, model.recollection)
    oracle_losses = detectors.criterion_losses(model, logits, boxes, inputs)
    assert set(oracle_losses) <= set(losses)
    for key in oracle_losses:
        torch.testing.assert_close(losses[key], oracle_losses[key], rtol=1e-5, atol=1e-5, msg=key)

    # Same gradients: references are attached and detached where the oracle has them.
    names, params = zip(
        *[(n, p) for n, p in model.named_parameters() if p.requires_grad], strict=True
    )
    batched = torch.autograd.grad(
        sum(losses[k] for k in oracle_losses), params, retain_graph=True, allow_unused=True
    )
    oracle = torch.autograd.grad(sum(oracle_losses.values()), params, allow_unused=True)
    for name, a, b in zip(names, batched, oracle, strict=True):
        assert (a is None) == (b is None), name
        if a is not None:
            scale = max(1.0, b.abs().max().item())
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_checkpointing_recollected_groups_changes_nothing(variant: str) -> None:
    detectors.check_checkpointing_changes_nothing(
        build(variant, "selective"),
        build(variant, "selective", "model.decoder.checkpoint_recollected=True"),
        lambda: batch(with_empty=False),
    )


@pytest.mark.parametrize("variant", ["plain", "refine"])
def test_memory_is_projected_once_per_layer_and_static_references_are_shared(
    variant: str,
) -> None:
    model = build(variant, "selective").train()
    calls = []
    for stage, layer in enumerate(model.decoder.layers):
        layer.cross_attn.value_proj.register_forward_hook(
            lambda *args, stage=stage: calls.append(("value", stage))
        )
        layer.cross_attn.register_forward_pre_hook(
            lambda module, args, stage=stage: calls.append(
                ("sample", stage, args[0].shape[1], args[2].shape[1])
            )
        )
    model(batch())
    queries = model.num_queries
    for stage, groups in enumerate(model.recollection.groups_per_stage):
        assert calls.count(("value", stage)) == 1  # not once per group
        samples = [c for c in calls if c[0] == "sample" and c[1] == stage]
        assert sum(c[2] for c in samples) == groups * queries  # every group decoded
        if variant == "plain":  # one call, the references given once for all groups
            assert samples == [("sample", stage, groups * queries, queries)]
        else:  # each group brings its own references
            assert all(c[2] == c[3] for c in samples)


def test_two_stage_needs_box_refinement() -> None:
    with pytest.raises(ValueError, match="with_box_refine"):
        build("two_stage", "none", "model.with_box_refine=False")


def test_training_without_targets_raises() -> None:
    detectors.check_training_without_targets_raises(build("plain"), batch())


def test_inference_contract() -> None:
    inputs = batch()
    inputs[0]["height"], inputs[0]["width"] = 128, 160  # report boxes at twice the input size
    # The SQR recipe keeps every top-k box (drop_empty_boxes=False; detrex's weights drop them).
    detectors.check_detections_by_hand(build("plain"), inputs, drop_empty=False)


def test_recipe_optimizer_groups_and_batch() -> None:
    # Fangyi-Chen/SQR configs/sqr/deformable_detr_SQR_r50_50e_coco.py:
    # AdamW 2e-4, x0.1 for backbone / sampling_offsets / reference_points,
    # weight decay 1e-4 on every parameter, clip 0.1, total batch 32, 50 epochs.
    cfg = LazyConfig.load(str(CONFIGS / VARIANTS["plain"]))
    LazyConfig.apply_overrides(cfg, TINY_DEFORMABLE_DETR)
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        slow = name.startswith("backbone.") or "sampling_offsets" in name
        slow = slow or name.startswith("reference_points.")
        assert lr_of[id(param)] == pytest.approx(2e-5 if slow else 2e-4), name
        assert decay_of[id(param)] == pytest.approx(1e-4), name
    assert cfg.train.clip_grad.enabled and cfg.train.clip_grad.params.max_norm == 0.1
    assert cfg.dataloader.train.total_batch_size == 32
    assert cfg.train.max_epochs == 50 and cfg.train.max_iter is None
    assert cfg.model.criterion.weight_dict == {
        "loss_class": 2.0,
        "loss_bbox": 5.0,
        "loss_giou": 2.0,
    }
    # mmdet's GIoU eps clamps pixel areas, which never binds: none on normalised boxes.
    assert model.criterion.giou_eps == model.criterion.matcher.giou_eps == 0.0


def run_capturing_encoder(model: torch.nn.Module, inputs: list[dict]) -> tuple:
    """``model(inputs)`` without gradients, with the padding mask [B, S] and valid ratios
    [B, L, 2] its encoder was given."""
    captured = {}
    handle = model.encoder.register_forward_hook(
        lambda module, args, output: captured.update(mask=args[2], ratios=args[4])
    )
    try:
        with torch.no_grad():
            outputs = model(inputs)
    finally:
        handle.remove()
    return outputs, captured["mask"], captured["ratios"]


def recipe_and_detrex_eval(variant: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The recipe's model and one with detrex's eval mask, with the same weights."""
    recipe = build(variant, "none")
    detrex = build(variant, "none", "model.mask_padding_in_eval=False")
    detrex.load_state_dict(recipe.state_dict())
    return recipe, detrex


@pytest.mark.parametrize("variant", ["plain", "two_stage"])
def test_detrex_eval_mask_is_all_zeros(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe, detrex = recipe_and_detrex_eval(variant)
    out_recipe, mask_recipe, _ = run_capturing_encoder(recipe.eval(), batch())
    out_detrex, mask_detrex, ratios = run_capturing_encoder(detrex.eval(), batch())

    # 64 x 80 and 72 x 56 pad to 72 x 80: each image has padding, which the recipe masks.
    assert mask_recipe[0].any() and mask_recipe[1].any()
    # detrex's encoder sees none of it: every token valid, every level's valid ratio 1.
    assert not mask_detrex.any()
    assert torch.equal(ratios, torch.ones_like(ratios))
    for a, b in zip(out_recipe, out_detrex, strict=True):
        assert not torch.equal(a["scores"], b["scores"])

    # It is exactly the recipe's model run on an all-zero padding mask.
    preprocess = recipe.preprocess_image

    def without_mask(inputs: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        tensor, padding = preprocess(inputs)
        return tensor, torch.zeros_like(padding)

    monkeypatch.setattr(recipe, "preprocess_image", without_mask)
    out_zero, _, _ = run_capturing_encoder(recipe, batch())
    for a, b in zip(out_zero, out_detrex, strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key]), key


def test_detrex_eval_mask_changes_nothing_in_training() -> None:
    recipe, detrex = recipe_and_detrex_eval("two_stage")
    losses_recipe, mask_recipe, _ = run_capturing_encoder(recipe.train(), batch())
    losses_detrex, mask_detrex, _ = run_capturing_encoder(detrex.train(), batch())

    # detrex masks the padding in training too.
    assert mask_recipe.any() and torch.equal(mask_detrex, mask_recipe)
    assert losses_detrex.keys() == losses_recipe.keys()
    for key, value in losses_recipe.items():
        assert torch.equal(losses_detrex[key], value), key


@pytest.mark.parametrize("drop", [False, True])
def test_drop_empty_boxes_option(drop: bool) -> None:
    model = build("plain", "none", f"model.drop_empty_boxes={drop}").eval()
    inputs = batch()[:1]  # 64 x 80
    # Two queries, 5 classes, top-10: every (query, class) pair is a detection. Query 1 lies
    # right of the image (x from 1.4 to 1.6 of its width): clipping leaves it zero wide.
    logits = torch.full((1, 2, 5), -5.0)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [1.5, 0.5, 0.2, 0.2]]])

    result = model.inference(logits, boxes, inputs)[0]

    widths = result["boxes"][:, 2] - result["boxes"][:, 0]
    assert len(widths) == (5 if drop else 10)
    assert (widths > 0).sum() == 5


@pytest.mark.parametrize("variant", list(DETREX_WEIGHTS))
def test_detrex_weight_configs_change_only_what_the_weights_need(variant: str) -> None:
    name, recipe_config = DETREX_WEIGHTS[variant]
    cfg = LazyConfig.load(str(CONFIGS / "detrex_weights" / f"{name}.py"))
    recipe = LazyConfig.load(str(CONFIGS / recipe_config))

    assert name in CHECKPOINTS and cfg.train.init_checkpoint == f"sqr://{name}"
    detrex = {
        "neck.bias": True,  # the original Deformable-DETR's input projections
        "mask_padding_in_eval": False,
        "drop_empty_boxes": True,  # detectron2's detector_postprocess
        "select_box_nums_for_evaluation": 300,
    }
    assert {key: OmegaConf.select(cfg.model, key) for key in detrex} == detrex
    assert recipe.model.mask_padding_in_eval is True and recipe.model.drop_empty_boxes is False
    for key, value in detrex.items():
        OmegaConf.update(recipe.model, key, value)
    for c in (cfg, recipe):
        c.train.init_checkpoint = c.train.output_dir = None
    assert OmegaConf.to_container(cfg, resolve=False) == OmegaConf.to_container(
        recipe, resolve=False
    )


@pytest.mark.parametrize(
    ("key", "value"), [("num_queries", 0), ("num_queries", -3), ("num_classes", 0)]
)
def test_non_positive_counts_are_named(key: str, value: int) -> None:
    # The criterion keeps its 5 classes, so the detector's own check is what fires.
    with pytest.raises(ValueError, match=f"{key} must be a positive integer, got {value}"):
        build("plain", "none", "model.criterion.num_classes=5", f"model.{key}={value}")
