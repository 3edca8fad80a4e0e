"""The detector contract, for every entry of :mod:`sqr.modeling.table`: evaluation outputs and
``predict()`` have the documented shapes and types, a batch gives what its images give one at
a time, SQR changes nothing in evaluation, and each SQR query group is what the plain chain of
its stages makes of it, whatever is batched with it."""

from __future__ import annotations

import pytest
import torch
from contract.models import Pair, build
from helpers import detectors

from sqr.modeling import table

NUM_CLASSES, NUM_QUERIES = 5, 10  # every entry's tiny size (table.TINY_*)


def batch(sizes=((56, 72), (48, 64))) -> list[dict]:
    """Two images (the first holds TWO_OBJECTS), the second without objects."""
    return detectors.detection_batch(list(sizes), [detectors.TWO_OBJECTS, detectors.NO_OBJECT])


def test_eval_outputs_have_the_documented_shapes_and_types(pair: Pair) -> None:
    inputs = batch()
    inputs[0]["height"], inputs[0]["width"] = 112, 144  # report boxes at twice the input size
    with torch.no_grad():
        results = pair.sqr.eval()(inputs)
    assert len(results) == len(inputs)
    for result in results:
        boxes, scores, labels = result["boxes"], result["scores"], result["labels"]
        n = len(scores)
        assert 0 < n <= NUM_QUERIES * NUM_CLASSES
        assert boxes.shape == (n, 4) and boxes.dtype == torch.float32
        assert scores.shape == (n,) and scores.dtype == torch.float32
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert torch.isfinite(boxes).all()
        assert (boxes[:, 2:] >= boxes[:, :2]).all(), "boxes are x1 y1 x2 y2"
        assert ((scores >= 0) & (scores <= 1)).all()
        assert ((labels >= 0) & (labels < NUM_CLASSES)).all()
        assert (scores[:-1] >= scores[1:]).all(), "sorted by score"


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_predict_gives_every_group_of_its_schedule(pair: Pair, training: bool) -> None:
    model = pair.sqr.train(training)
    torch.manual_seed(0)  # denoising draws
    with torch.set_grad_enabled(training):
        logits, boxes, schedule = model.predict(batch())
    stages = model.recollection.num_stages
    if training:
        assert schedule is model.recollection and not schedule.is_plain
    else:
        assert schedule.is_plain and schedule.num_groups == stages
    shape = (schedule.num_groups, 2, NUM_QUERIES)
    assert logits.shape == (*shape, NUM_CLASSES) and logits.dtype == torch.float32
    assert boxes.shape == (*shape, 4) and boxes.dtype == torch.float32
    # Normalised cxcywh, up to float rounding (AdaMixer's whole-image proposals are 1 + 1 ulp
    # wide after the xyxy -> cxcywh conversion; its boxes are not clipped, as in mmdet).
    eps = 4 * torch.finfo(torch.float32).eps
    assert ((boxes >= -eps) & (boxes <= 1 + eps)).all(), "normalised cxcywh"
    assert logits.requires_grad == boxes.requires_grad == training


def test_batched_eval_equals_one_image_at_a_time(pair: Pair) -> None:
    # One size: padding, which only a batch of sizes adds, changes the backbone's features.
    inputs = detectors.detection_batch(
        [(56, 72)] * 3, [detectors.TWO_OBJECTS, detectors.NO_OBJECT, detectors.ONE_OBJECT]
    )
    model = pair.sqr.eval()
    with torch.no_grad():
        batched = model(inputs)
        single = [model([x])[0] for x in inputs]
    for many, one in zip(batched, single, strict=True):
        assert torch.equal(many["labels"], one["labels"])
        # Only the order of float sums differs (batched matrix products); boxes are in pixels.
        torch.testing.assert_close(many["scores"], one["scores"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(many["boxes"], one["boxes"], rtol=1e-5, atol=1e-4)


def test_sqr_eval_equals_baseline_eval_bit_for_bit(pair: Pair) -> None:
    out = detectors.check_eval_identical_with_sqr_on_and_off(pair.sqr, pair.baseline, batch)
    with torch.enable_grad():  # evaluation is the plain chain with gradients on too
        again = pair.sqr.eval()(batch())
    for a, b in zip(out, again, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("boxes", "scores", "labels"))


def group_paths(schedule) -> list[tuple[int, ...]]:
    """The stages each output group went through, from the initial queries: reserve index 0 is
    the initial queries, and stage ``s`` appends one group per reserve index it decodes."""
    reserve: list[tuple[int, ...]] = [()]
    for stage in range(schedule.num_stages):
        reserve += [(*reserve[source], stage) for source in schedule.sources(stage)]
    return reserve[1:]


def training_predictions(model: torch.nn.Module) -> dict[tuple[int, ...], tuple]:
    """(logits, boxes) of every group of a training forward, by the group's path."""
    torch.manual_seed(0)  # the same denoising draws for every schedule
    logits, boxes, schedule = model.train().predict(batch())
    paths = group_paths(schedule)
    assert len(set(paths)) == len(paths) == logits.shape[0]
    return {path: (logits[i], boxes[i]) for i, path in enumerate(paths)}


def test_each_group_is_its_stage_chain_whatever_is_batched_with_it(pair: Pair) -> None:
    """The per-group oracle: a group's predictions depend on its path only. The baseline runs
    one group per stage (no batching: the oracle of the plain chain); SQR's selective schedule
    and the dense one batch each group with different others."""
    dense = build(pair.entry, "model.recollection.mode=dense")
    dense.load_state_dict(pair.sqr.state_dict())
    with torch.no_grad():
        selective = training_predictions(pair.sqr)
        everything = training_predictions(dense)
        chain = training_predictions(pair.baseline)
    assert len(selective) == pair.sqr.recollection.num_groups > len(chain)
    assert set(chain) <= set(selective) <= set(everything)
    for path, (logits, boxes) in selective.items():
        for oracle in (everything, chain):
            if path in oracle:
                expected_logits, expected_boxes = oracle[path]
                torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(boxes, expected_boxes, rtol=1e-5, atol=1e-5)


def test_training_gives_the_losses_of_every_group_with_gradients(pair: Pair) -> None:
    # The batch's second image has no object: its terms must still reach every parameter.
    model = pair.sqr.train()
    model.zero_grad()
    torch.manual_seed(0)
    losses = model(batch())
    assert losses and all(v.dim() == 0 and v.dtype == torch.float32 for v in losses.values())
    # Every stage is supervised, with the three terms of the criterion.
    stages = range(model.recollection.num_stages)
    expected = {f"loss_{term}_s{s}" for term in ("class", "bbox", "giou") for s in stages}
    assert expected <= losses.keys()
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing}"
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.isfinite(grad).all() for grad in grads)
    model.zero_grad()


def test_the_entry_names_its_models_modules(pair: Pair) -> None:
    for model in (pair.sqr, pair.baseline):
        assert {key.split(".")[0] for key in model.state_dict()} == pair.entry.native_modules
    assert pair.sqr.state_dict().keys() == pair.baseline.state_dict().keys()


def test_the_baseline_is_the_sqr_recipe_without_recollection(pair: Pair) -> None:
    assert pair.baseline.recollection.is_plain
    assert pair.sqr.recollection.mode == "selective"
    assert table.BASELINE == "model.recollection.mode=none"
