"""DAB-DETR with SQR: group batching against a per-group oracle, and the model contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.tiny import TINY_DAB_DETR

from sqr.config import LazyConfig, instantiate
from sqr.layers.box_ops import inverse_sigmoid

CONFIG = Path(__file__).resolve().parents[2] / "projects/sqr/configs/sqr_dab_detr_r50_50ep.py"


def build(mode: str = "selective", *extra: str) -> torch.nn.Module:
    cfg = LazyConfig.load(str(CONFIG))
    LazyConfig.apply_overrides(cfg, [*TINY_DAB_DETR, f"model.recollection.mode={mode}", *extra])
    torch.manual_seed(0)
    return instantiate(cfg.model)


def batch(with_empty: bool = True) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    images = [
        torch.randint(0, 256, (3, 64, 80), generator=gen, dtype=torch.uint8),
        torch.randint(0, 256, (3, 72, 64), generator=gen, dtype=torch.uint8),
    ]
    targets = [
        {
            "boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 70.0, 30.0]]),
            "labels": torch.tensor([1, 4]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
        if with_empty
        else {"boxes": torch.tensor([[0.0, 0.0, 20.0, 20.0]]), "labels": torch.tensor([2])},
    ]
    return [
        {"image": im, "height": im.shape[1], "width": im.shape[2], "targets": t}
        for im, t in zip(images, targets, strict=True)
    ]


def oracle_decode(decoder, memory, memory_pos, anchors, bbox_embed, schedule):
    """The schedule run one group at a time with the same layers: no batching of groups."""
    num_queries = anchors.shape[0]
    contents = [memory.new_zeros(memory.shape[0], num_queries, decoder.embed_dim)]
    references = [anchors.sigmoid().unsqueeze(0).expand(memory.shape[0], -1, -1)]
    hidden, used = [], []
    for stage in range(schedule.num_stages):
        memory_kv = decoder.layers[stage].cross_attn.project_memory(memory, memory_pos)
        for source in schedule.sources(stage):
            reference = references[source]
            used.append(reference)
            reference_in = reference.detach() if stage > 0 else reference
            out = decoder.decode_stage(stage, contents[source], reference_in, memory_kv, 1)
            hidden.append(decoder.norm(out))
            contents.append(out)
            references.append(
                (bbox_embed(out) + inverse_sigmoid(reference_in, decoder.eps)).sigmoid()
            )
    return torch.stack(hidden), torch.stack(used)


@pytest.mark.parametrize("mode", ["selective", "dense", "none"])
def test_batched_groups_equal_per_group_oracle(mode: str) -> None:
    model = build(mode).train()
    inputs = batch()
    captured = {}
    model.decoder.register_forward_hook(
        lambda module, args, output: captured.update(args=args, output=output)
    )
    losses = model(inputs)
    hidden, references = captured["output"]
    oracle_hidden, oracle_references = oracle_decode(model.decoder, *captured["args"])
    assert hidden.shape[0] == model.recollection.num_groups
    torch.testing.assert_close(hidden, oracle_hidden, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(references, oracle_references, rtol=1e-5, atol=1e-5)

    # Losses from the oracle's predictions, through the same heads and criterion.
    logits = model.class_embed(oracle_hidden)
    boxes = (
        model.bbox_embed(oracle_hidden) + inverse_sigmoid(oracle_references, model.eps)
    ).sigmoid()
    targets = [model._normalised_targets(x) for x in inputs]
    oracle_losses = model.criterion(logits, boxes, targets, model.recollection.group_stage)
    assert losses.keys() == oracle_losses.keys()
    for key in losses:
        torch.testing.assert_close(losses[key], oracle_losses[key], rtol=1e-5, atol=1e-5, msg=key)


def test_eval_identical_with_sqr_on_and_off() -> None:
    sqr, plain = build("selective"), build("none")
    assert sqr.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(sqr.state_dict())
    sqr.eval(), plain.eval()
    with torch.no_grad():
        out_sqr, out_plain = sqr(batch()), plain(batch())
    for a, b in zip(out_sqr, out_plain, strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key]), key
    # Evaluation runs the plain chain even with grad enabled (no requires_grad switch).
    out_grad = sqr(batch())
    assert torch.equal(out_grad[0]["boxes"], out_sqr[0]["boxes"])


def test_every_parameter_gets_a_gradient_with_an_empty_image() -> None:
    model = build("selective").train()
    losses = model(batch(with_empty=True))
    assert len(losses) == 18  # 3 terms x 6 stages
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_training_without_targets_raises() -> None:
    model = build().train()
    inputs = batch()
    del inputs[1]["targets"]
    with pytest.raises(ValueError, match="targets"):
        model(inputs)


def test_checkpointing_recollected_groups_changes_nothing() -> None:
    plain, ckpt = (
        build("selective"),
        build("selective", "model.decoder.checkpoint_recollected=True"),
    )
    ckpt.load_state_dict(plain.state_dict())
    results = []
    for model in (plain, ckpt):
        model.train()
        losses = model(batch(with_empty=False))
        sum(losses.values()).backward()
        results.append((losses, {n: p.grad for n, p in model.named_parameters()}))
    (losses_a, grads_a), (losses_b, grads_b) = results
    for key in losses_a:
        torch.testing.assert_close(losses_a[key], losses_b[key], rtol=1e-6, atol=1e-6)
    for name, grad in grads_a.items():
        # Recomputation sums in another order: compare at the scale of the whole gradient (some
        # biases get gradients that are rounding noise around zero).
        scale = max(1.0, grad.abs().max().item())
        torch.testing.assert_close(grad, grads_b[name], rtol=0, atol=1e-5 * scale, msg=name)


def test_inference_contract() -> None:
    model = build().eval()
    inputs = batch()
    inputs[0]["height"], inputs[0]["width"] = 128, 160  # report boxes at twice the input size
    with torch.no_grad():
        results = model(inputs)
    first = results[0]
    assert first["boxes"].shape[1] == 4 and first["scores"].shape == first["labels"].shape
    assert len(first["scores"]) <= 10  # select_box_nums_for_evaluation
    assert (first["boxes"][:, 2] <= 160).all() and (first["boxes"][:, 3] <= 128).all()
    assert first["labels"].max() < 5
