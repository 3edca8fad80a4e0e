"""DAB-DETR with SQR: group batching against a per-group oracle, and the model contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import detectors
from helpers.tiny import TINY_DAB_DETR

from sqr.layers.box_ops import inverse_sigmoid

CONFIG = Path(__file__).resolve().parents[2] / "projects/sqr/configs/sqr_dab_detr_r50_50ep.py"


def build(mode: str = "selective", *extra: str) -> torch.nn.Module:
    return detectors.build_detector(
        CONFIG, [*TINY_DAB_DETR, f"model.recollection.mode={mode}", *extra]
    )


def batch(with_empty: bool = True) -> list[dict]:
    second = detectors.NO_OBJECT if with_empty else detectors.ONE_OBJECT
    return detectors.detection_batch([(64, 80), (72, 64)], [detectors.TWO_OBJECTS, second])


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
    model = build(mode)
    inputs = batch()
    losses, args, _, (hidden, references) = detectors.train_capturing_decoder(model, inputs)
    oracle_hidden, oracle_references = oracle_decode(model.decoder, *args)
    assert hidden.shape[0] == model.recollection.num_groups
    torch.testing.assert_close(hidden, oracle_hidden, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(references, oracle_references, rtol=1e-5, atol=1e-5)

    # Losses from the oracle's predictions, through the same heads and criterion.
    logits = model.class_embed(oracle_hidden)
    boxes = (
        model.bbox_embed(oracle_hidden) + inverse_sigmoid(oracle_references, model.eps)
    ).sigmoid()
    oracle_losses = detectors.criterion_losses(model, logits, boxes, inputs)
    assert losses.keys() == oracle_losses.keys()
    for key in losses:
        torch.testing.assert_close(losses[key], oracle_losses[key], rtol=1e-5, atol=1e-5, msg=key)


def test_training_without_targets_raises() -> None:
    detectors.check_training_without_targets_raises(build(), batch())


def test_checkpointing_recollected_groups_changes_nothing() -> None:
    detectors.check_checkpointing_changes_nothing(
        build("selective"),
        build("selective", "model.decoder.checkpoint_recollected=True"),
        lambda: batch(with_empty=False),
    )


def test_inference_contract() -> None:
    inputs = batch()
    inputs[0]["height"], inputs[0]["width"] = 128, 160  # report boxes at twice the input size
    # detrex's DAB-DETR post-processing drops the boxes that clipping to the image emptied.
    detectors.check_detections_by_hand(build(), inputs, drop_empty=True)


@pytest.mark.parametrize(
    ("key", "value"), [("num_queries", 0), ("num_queries", -3), ("num_classes", 0)]
)
def test_non_positive_counts_are_named(key: str, value: int) -> None:
    # The criterion keeps its 5 classes, so the detector's own check is what fires.
    with pytest.raises(ValueError, match=f"{key} must be a positive integer, got {value}"):
        build("none", "model.criterion.num_classes=5", f"model.{key}={value}")


def test_recipe_giou_eps_is_detrex_s() -> None:
    # detrex's box_ops adds 1e-6 to the union and the hull, in the matcher and the loss alike.
    criterion = build("none").criterion
    assert criterion.giou_eps == criterion.matcher.giou_eps == 1e-6
