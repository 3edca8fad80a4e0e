"""DINO with SQR: group batching (denoising queries in the chain) against a per-group oracle,
the detector contract, and the recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import detectors
from helpers.tiny import TINY_DINO

from sqr.config import LazyConfig, instantiate
from sqr.modeling.decoders.dino import DinoInputs
from sqr.modeling.denoising import denoising_losses
from sqr.modeling.detectors.base import stage_heads

CONFIGS = Path(__file__).resolve().parents[2] / "projects/sqr/configs"
SQR_CONFIG, BASE_CONFIG = "sqr_dino_r50_4scale_12ep.py", "dino_r50_4scale_12ep.py"
EPS = 1e-3  # the config's inverse_sigmoid_eps


def build(mode: str = "selective", *extra: str) -> torch.nn.Module:
    overrides = [*TINY_DINO, f"model.recollection.mode={mode}", *extra]
    return detectors.build_detector(CONFIGS / SQR_CONFIG, overrides)


def batch(with_empty: bool = True) -> list[dict]:
    second = detectors.NO_OBJECT if with_empty else detectors.ONE_OBJECT
    # The second image is narrower: padded in x.
    return detectors.detection_batch([(64, 80), (72, 56)], [detectors.TWO_OBJECTS, second])


def seeded_batch(with_empty: bool = True) -> list[dict]:
    """A batch, with torch's generator reset: the denoising noise of the next training step is
    then the same in every model that is given it."""
    torch.manual_seed(7)
    return batch(with_empty)


def refined(delta: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """DINO's refinement written out: ``sigmoid(delta + logit(reference))``, logit clamped."""
    r = reference.clamp(0, 1)
    return (delta + torch.log(r.clamp(min=EPS) / (1 - r).clamp(min=EPS))).sigmoid()


def oracle_decode(
    decoder,
    content,
    reference,
    memory,
    padding,
    shapes,
    ratios,
    bbox_embed,
    schedule,
    dn_content=None,
    dn_boxes=None,
    mask=None,
):
    """The schedule run one group at a time with the same layers: the chain carries the
    denoising queries under their mask, recollected groups leave them behind (unless the
    decoder recollects them), references are detached after the first stage and each stage's
    boxes come from the references before that detach (look forward twice)."""
    num_queries = content.shape[1]
    if dn_content is not None:
        content = torch.cat([dn_content, content], 1)
        reference = torch.cat([dn_boxes, reference], 1)
    contents, references = [content], [reference]
    hidden, used, dn_hidden, dn_used, dn_stage = [], [], [], [], []
    inputs = DinoInputs(
        memory, padding, shapes, ratios, bbox_embed, None, reference, num_queries, mask
    )
    for stage in range(schedule.num_stages):
        maps = decoder.layers[stage].cross_attn.project_value(memory, shapes, padding)
        sources = list(schedule.sources(stage))
        for i, source in enumerate(sources):
            c, r = contents[source], references[source]
            if i < len(sources) - 1 and not decoder.recollect_denoising:
                c, r = c[:, -num_queries:], r[:, -num_queries:]
            r_in = r if stage == 0 else r.detach()
            group_mask = mask if c.shape[1] > num_queries else None
            out = decoder.decode_stage(stage, c, r_in, maps, inputs, 1, group_mask)
            normed, extra = decoder.norm(out), out.shape[1] - num_queries
            hidden.append(normed[:, extra:])
            used.append(r[:, extra:])
            if extra:
                dn_hidden.append(normed[:, :extra])
                dn_used.append(r[:, :extra])
                dn_stage.append(stage)
            contents.append(out)
            references.append(refined(bbox_embed[stage](out), r_in))
    stack = torch.stack
    return stack(hidden), stack(used), stack(dn_hidden), stack(dn_used), tuple(dn_stage)


@pytest.mark.parametrize(
    ("mode", "recollect_denoising"),
    [("selective", False), ("dense", False), ("selective", True)],
)
def test_batched_groups_equal_per_group_oracle(mode: str, recollect_denoising: bool) -> None:
    model = build(mode, f"model.decoder.recollect_denoising={recollect_denoising}")
    inputs = seeded_batch()
    captured = []
    model.denoising.register_forward_hook(lambda module, args, out: captured.append(out))
    losses, args, _, out = detectors.train_capturing_decoder(model, inputs)
    (dn,) = captured
    assert dn.num_groups == 2  # 4 denoising queries // 2 targets
    hidden, refs, dn_hidden, dn_refs, dn_stage = oracle_decode(model.decoder, *args)
    schedule = model.recollection
    assert out.hidden.shape[0] == schedule.num_groups
    expected_stage = schedule.group_stage if recollect_denoising else tuple(range(6))
    assert out.denoising_group_stage == dn_stage == tuple(expected_stage)
    for a, b in [(out.hidden, hidden), (out.references, refs)]:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in [(out.denoising_hidden, dn_hidden), (out.denoising_references, dn_refs)]:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    # Losses from the oracle's groups through the same heads and criterion.
    targets = [model._normalised_targets(x) for x in inputs]
    heads = model.class_embed, model.bbox_embed
    logits, boxes = stage_heads(*heads, hidden, refs, schedule.group_stage, model.eps)
    oracle_losses = model.criterion(logits, boxes, targets, schedule.group_stage)
    logits, boxes = stage_heads(*heads, dn_hidden, dn_refs, dn_stage, model.eps)
    oracle_losses.update(denoising_losses(model.criterion, logits, boxes, targets, dn_stage, dn))
    assert len(oracle_losses) == 36 and set(oracle_losses) <= set(losses)
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


def test_matching_queries_never_see_the_denoising_queries() -> None:
    model = build("none").train()
    inputs = seeded_batch(with_empty=False)
    targets = [model._normalised_targets(x) for x in inputs]
    images, padding = model.preprocess_image(inputs)
    with_dn, without = model._decode(images, padding, targets), model._decode(images, padding, None)
    assert with_dn.denoising is not None and without.denoising is None
    torch.testing.assert_close(with_dn.logits, without.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(with_dn.boxes, without.boxes, rtol=1e-5, atol=1e-5)


def test_checkpointing_recollected_groups_changes_nothing() -> None:
    detectors.check_checkpointing_changes_nothing(
        build("selective"),
        build("selective", "model.decoder.checkpoint_recollected=True"),
        lambda: seeded_batch(with_empty=False),
    )


def test_training_without_targets_raises() -> None:
    detectors.check_training_without_targets_raises(build(), batch())


def test_inference_contract() -> None:
    inputs = batch()
    inputs[0]["height"], inputs[0]["width"] = 128, 160  # report boxes at twice the input size
    # Top-k query-class pairs, minus any box that clipping to the image emptied (detrex).
    detectors.check_detections_by_hand(build(), inputs, drop_empty=True)


def test_recipe() -> None:
    # detrex dino_r50_4scale_12ep: AdamW 1e-4, backbone x0.1, weight decay 1e-4 (0 on norms),
    # clip 0.1, total batch 16, 90k iterations with the drop at 11/12, 900 queries, 100
    # denoising queries, loss weights 1 / 5 / 2 everywhere.
    cfg = LazyConfig.load(str(CONFIGS / BASE_CONFIG))
    assert cfg.model.num_queries == 900 and cfg.model.denoising.num_denoising == 100
    assert cfg.model.denoising.label_noise_ratio == 0.5 and cfg.model.denoising.box_noise_scale == 1
    assert cfg.model.decoder.recollect_denoising is False
    LazyConfig.apply_overrides(cfg, TINY_DINO)
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        assert lr_of[id(param)] == pytest.approx(1e-5 if name.startswith("backbone.") else 1e-4)
    assert cfg.train.clip_grad.enabled and cfg.train.clip_grad.params.max_norm == 0.1
    assert cfg.dataloader.train.total_batch_size == 16 and cfg.train.max_iter == 90000
    schedule = instantiate(cfg.lr_multiplier)
    assert schedule(82499, 90000) == 1.0 and schedule(82500, 90000) == pytest.approx(0.1)
    assert model.criterion.weight_dict == {"loss_class": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def test_heads_start_equal_as_detrex_deep_copies() -> None:
    model = build()
    for heads in (model.class_embed, model.bbox_embed):
        assert len(heads) == 7  # 6 layers + the encoder proposals
        for head in heads[1:]:
            for a, b in zip(head.parameters(), heads[0].parameters(), strict=True):
                assert torch.equal(a, b)
    assert not model.bbox_embed[0].layers[-1].weight.any()


def test_denoising_inputs_come_together() -> None:
    model = build().train()
    inputs = seeded_batch()
    _, args, _, _ = detectors.train_capturing_decoder(model, inputs)
    with pytest.raises(ValueError, match="content, boxes and mask, or none"):
        model.decoder(*args[:-1])  # content and boxes without the mask
