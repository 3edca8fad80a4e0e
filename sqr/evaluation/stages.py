"""Every decoder stage's predictions from a detector in evaluation mode.

Built on the detector contract (README, "Detector contract"): in eval mode
``model.predict(batched_inputs)`` returns ``(logits [S, B, Q, K], boxes [S, B, Q, 4], schedule)``
with the plain schedule, i.e. one group per decoder stage (the baseline chain, the last one being
the final output), and ``model.inference(logits[s], boxes[s], batched_inputs)`` turns one stage
into eval outputs. Nothing here changes what ``model(batched_inputs)`` returns.

Two views of the same stages:

* :func:`stage_predictions`: per stage, per image, exactly what ``model(batched_inputs)`` would
  return if stage ``s`` were the last one (the detector's own post-processing, e.g. DAB-DETR's
  top-k over all query-class pairs, where one query may appear with several labels).
* :func:`query_predictions`: one prediction per *query* and stage, so the same query can be
  followed through the decoder. A query's prediction at stage ``s`` is its **top class**
  ``label = argmax_k logits[s, b, q, k]`` with **score** ``max_k sigmoid(logits[s, b, q, k])``
  (the sigmoid focal-loss classifiers of this project have no background class), and its box
  converted from normalised cxcywh to absolute xyxy in the image's ``height`` x ``width`` and
  clipped to it, as detectron2's post-processing does (AdaMixer's own inference, following mmdet,
  does not clip; the ground truth lies inside the image either way).
"""

from __future__ import annotations

import torch
from torch import nn

from sqr.layers.box_ops import box_cxcywh_to_absolute_xyxy

__all__ = ["predict_stages", "query_predictions", "stage_outputs", "stage_predictions"]


def predict_stages(
    model: nn.Module, batched_inputs: list[dict]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class logits and boxes of every decoder stage, under ``torch.no_grad``.

    Args:
        model: a detector following the contract, in eval mode.
        batched_inputs: model inputs (``"image"``, ``"height"``, ``"width"``).

    Returns:
        ``(logits [S, B, Q, K], boxes [S, B, Q, 4] normalised cxcywh)``; index ``S - 1`` is the
        final prediction.

    Raises:
        ValueError: if the model is in training mode (training decodes recollected groups, not
            one prediction set per stage) or its schedule is not the plain one.
    """
    if model.training:
        raise ValueError(
            "stage predictions need the model in eval mode (call model.eval()): in training the "
            "decoder follows the recollection schedule and returns groups, not stages"
        )
    with torch.no_grad():
        logits, boxes, schedule = model.predict(batched_inputs)
    if not schedule.is_plain or logits.shape[0] != schedule.num_stages:
        raise ValueError(
            f"{type(model).__name__}.predict returned {logits.shape[0]} groups with schedule "
            f"{schedule!r} in eval mode; the detector contract asks for the plain schedule "
            "(one group per stage)"
        )
    return logits, boxes


def stage_predictions(model: nn.Module, batched_inputs: list[dict]) -> list[list[dict]]:
    """Eval outputs of every decoder stage, as if each were the last one.

    Args:
        model: a detector following the contract, in eval mode.
        batched_inputs: model inputs (``"image"``, ``"height"``, ``"width"``).

    Returns:
        ``outputs[s][b]``: stage ``s``'s output for image ``b``, a dict with ``"boxes"``
        (Tensor[k, 4] xyxy in height x width), ``"scores"`` and ``"labels"`` (Tensor[k]); the
        last entry equals ``model(batched_inputs)``.
    """
    return stage_outputs(model, *predict_stages(model, batched_inputs), batched_inputs)


def stage_outputs(
    model: nn.Module, logits: torch.Tensor, boxes: torch.Tensor, batched_inputs: list[dict]
) -> list[list[dict]]:
    """:func:`stage_predictions` from the result of :func:`predict_stages` (no second forward).

    Args:
        model: the detector whose ``inference`` post-processes each stage.
        logits: Tensor[S, B, Q, K]; boxes: Tensor[S, B, Q, 4] normalised cxcywh.
        batched_inputs: the B inputs they were predicted from.
    """
    return [model.inference(lg, bx, batched_inputs) for lg, bx in zip(logits, boxes, strict=True)]


def query_predictions(
    logits: torch.Tensor, boxes: torch.Tensor, batched_inputs: list[dict]
) -> list[dict[str, torch.Tensor]]:
    """One prediction per query and stage: top class, its score, and the box (module docstring).

    Args:
        logits: Tensor[S, B, Q, K] class logits.
        boxes: Tensor[S, B, Q, 4] normalised cxcywh (relative to each image's own size).
        batched_inputs: the B inputs; ``"height"``/``"width"`` give the output size (the image
            size when absent).

    Returns:
        Per image: ``{"boxes": Tensor[S, Q, 4] xyxy in height x width, "scores": Tensor[S, Q],
        "labels": int64 Tensor[S, Q]}``; query ``q`` is the same query at every stage.
    """
    scores, labels = logits.sigmoid().max(dim=-1)
    results = []
    for b, x in enumerate(batched_inputs):
        height = x.get("height", x["image"].shape[-2])
        width = x.get("width", x["image"].shape[-1])
        xyxy = box_cxcywh_to_absolute_xyxy(boxes[:, b], height, width, clip=True)
        results.append({"boxes": xyxy, "scores": scores[:, b], "labels": labels[:, b]})
    return results
