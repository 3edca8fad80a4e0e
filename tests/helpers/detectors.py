"""The real detectors at test size: building them, their input batches, and the checks of the
detector contract (:class:`sqr.modeling.detectors.base.QueryDetector`) that every detector's
tests run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torchvision.ops import box_convert

from sqr.config import LazyConfig, instantiate

# Targets as (boxes absolute xyxy, labels).
TWO_OBJECTS = ([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 70.0, 30.0]], [1, 4])
NO_OBJECT = ([], [])
ONE_OBJECT = ([[0.0, 0.0, 20.0, 20.0]], [2])


def build_detector(config: Path, overrides: Sequence[str]) -> nn.Module:
    """The config's model with ``overrides`` applied, initialised from seed 0."""
    cfg = LazyConfig.load(str(config))
    LazyConfig.apply_overrides(cfg, list(overrides))
    torch.manual_seed(0)
    return instantiate(cfg.model)


def detection_batch(
    sizes: Sequence[tuple[int, int]], targets: Sequence[tuple[list, list]]
) -> list[dict]:
    """One model input per (height, width): uint8 pixels drawn from seed 1, image by image,
    and the matching ``(boxes, labels)`` of ``targets`` as training targets."""
    gen = torch.Generator().manual_seed(1)
    inputs = []
    for (height, width), (boxes, labels) in zip(sizes, targets, strict=True):
        image = torch.randint(0, 256, (3, height, width), generator=gen, dtype=torch.uint8)
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
        }
        inputs.append({"image": image, "height": height, "width": width, "targets": target})
    return inputs


def train_capturing_decoder(
    model: nn.Module, inputs: list[dict]
) -> tuple[dict[str, torch.Tensor], tuple, dict, Any]:
    """The training losses of ``model`` on ``inputs``, with the positional arguments, keyword
    arguments and output of the decoder call they came from (to replay it in an oracle)."""
    captured = {}
    handle = model.decoder.register_forward_hook(
        lambda module, args, kwargs, output: captured.update(args=args, kwargs=kwargs, out=output),
        with_kwargs=True,
    )
    try:
        losses = model.train()(inputs)
    finally:
        handle.remove()
    return losses, captured["args"], captured["kwargs"], captured["out"]


def criterion_losses(
    model: nn.Module, logits: torch.Tensor, boxes: torch.Tensor, inputs: list[dict]
) -> dict[str, torch.Tensor]:
    """``model``'s criterion on predictions of every training group (logits [G, B, Q, K], boxes
    [G, B, Q, 4] normalised cxcywh) against the targets of ``inputs``."""
    targets = [model._normalised_targets(x) for x in inputs]
    return model.criterion(logits, boxes, targets, model.recollection.group_stage)


def check_eval_identical_with_sqr_on_and_off(
    sqr: nn.Module, plain: nn.Module, make_batch: Callable[[], list[dict]]
) -> list[dict]:
    """SQR adds no parameters, and with the same weights evaluation gives exactly the plain
    detector's outputs. Returns the SQR model's outputs (computed under no_grad)."""
    assert sqr.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(sqr.state_dict())
    sqr.eval(), plain.eval()
    with torch.no_grad():
        out_sqr, out_plain = sqr(make_batch()), plain(make_batch())
    for a, b in zip(out_sqr, out_plain, strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key]), key
    return out_sqr


def check_training_without_targets_raises(model: nn.Module, inputs: list[dict]) -> None:
    del inputs[1]["targets"]
    with pytest.raises(ValueError, match="targets"):
        model.train()(inputs)


def check_checkpointing_changes_nothing(
    plain: nn.Module, checkpointed: nn.Module, make_batch: Callable[[], list[dict]]
) -> None:
    """With ``plain``'s weights, the model that checkpoints its recollected groups gives the
    same losses and gradients."""
    checkpointed.load_state_dict(plain.state_dict())
    results = []
    for model in (plain, checkpointed):
        losses = model.train()(make_batch())
        sum(losses.values()).backward()
        results.append((losses, {n: p.grad for n, p in model.named_parameters()}))
    (losses_a, grads_a), (losses_b, grads_b) = results
    assert losses_a.keys() == losses_b.keys()
    for key in losses_a:
        torch.testing.assert_close(losses_a[key], losses_b[key], rtol=1e-6, atol=1e-6)
    for name, grad in grads_a.items():
        if grad is None:
            assert grads_b[name] is None, name
            continue
        # Recomputation sums in another order: compare at the scale of the whole gradient (some
        # biases get gradients that are rounding noise around zero).
        scale = max(1.0, grad.abs().max().item())
        torch.testing.assert_close(grad, grads_b[name], rtol=0, atol=1e-5 * scale, msg=name)


def check_detections_by_hand(model: nn.Module, inputs: list[dict], *, drop_empty: bool) -> None:
    """Evaluation reports, per image, the top-k (query, class) pairs of the final stage by
    sigmoid score and their boxes in the input's ``height`` x ``width``, clipped to it, without
    the boxes clipping emptied when ``drop_empty``: recomputed here from :meth:`predict`'s
    normalised cxcywh boxes with torchvision, not by the model's post-processing."""
    model.eval()
    with torch.no_grad():
        results = model(inputs)
        logits, boxes, _ = model.predict(inputs)
    num_classes, top_k = logits.shape[-1], model.select_box_nums_for_evaluation
    # One call over the batch, as the model makes it: a vectorised sigmoid may round the
    # elements that one image's slice would leave to its scalar tail differently.
    all_scores = logits[-1].sigmoid().flatten(1)  # [B, Q * K], query-major
    for b, (x, result) in enumerate(zip(inputs, results, strict=True)):
        scores = all_scores[b]
        order = scores.argsort(descending=True, stable=True)[:top_k]
        query, label = order.div(num_classes, rounding_mode="floor"), order.remainder(num_classes)
        height, width = x["height"], x["width"]
        xyxy = box_convert(boxes[-1, b, query], "cxcywh", "xyxy")
        xyxy = xyxy * torch.tensor([width, height, width, height], dtype=xyxy.dtype)
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
        keep = torch.ones(len(order), dtype=torch.bool)
        if drop_empty:
            keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        torch.testing.assert_close(result["boxes"], xyxy[keep], msg=f"image {b} boxes")
        assert torch.equal(result["scores"], scores[order][keep]), f"image {b} scores"
        assert torch.equal(result["labels"], label[keep]), f"image {b} labels"
