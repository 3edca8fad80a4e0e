"""detectron2's model interface for sqr detectors, so that detrex's ``tools/train_net.py``
trains and evaluates them with detectron2's loaders, checkpointer and ``COCOEvaluator``.

detectron2 is imported inside the functions that need it: importing this module (and ``sqr``)
works without it. The conversions are plain functions, testable one by one:

* :func:`to_sqr_inputs`: detectron2 inputs (``"image"`` in ``input_format``, ``"instances"``)
  to the inputs of :class:`sqr.modeling.detectors.base.QueryDetector` (RGB, ``"targets"``).
* :func:`instances_to_targets` / :func:`targets_to_instances`: ground truth both ways.
* :func:`outputs_to_instances` / :func:`instances_to_outputs`: predictions both ways.

:func:`lr_factors_by_name` gives detectron2's optimizer builder sqr's ``lr_factors`` rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from detectron2.structures import Instances

__all__ = [
    "Detectron2Adapter",
    "instances_to_outputs",
    "instances_to_targets",
    "lr_factors_by_name",
    "outputs_to_instances",
    "targets_to_instances",
    "to_rgb",
    "to_sqr_inputs",
]

# detectron2's names (``INPUT.FORMAT``, the mappers' ``img_format``) of the formats handled here.
INPUT_FORMATS = ("BGR", "RGB")
_DETECTOR = "detector."


def to_rgb(image: torch.Tensor, input_format: str) -> torch.Tensor:
    """One image in RGB channel order.

    Args:
        image: Tensor[3, H, W] in ``input_format`` (detectron2 loaders give uint8).
        input_format: ``"BGR"`` (detectron2's default ``INPUT.FORMAT``) or ``"RGB"`` (detrex's
            DETR mappers, ``img_format="RGB"``).

    Returns:
        Tensor[3, H, W] RGB, the input itself when it already is.
    """
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {input_format!r}")
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image Tensor[3, H, W], got shape {tuple(image.shape)}")
    return image.flip(0) if input_format == "BGR" else image


def instances_to_targets(instances: Instances) -> dict[str, torch.Tensor]:
    """detectron2 ground truth as sqr targets.

    Args:
        instances: with ``gt_boxes`` (Boxes, absolute xyxy) and ``gt_classes`` (contiguous ids).

    Returns:
        {"boxes": Tensor[N, 4] absolute xyxy, "labels": Tensor[N] int64}.
    """
    for field in ("gt_boxes", "gt_classes"):
        if not instances.has(field):
            raise ValueError(f"training instances need {field!r}, got {instances.get_fields()}")
    return {"boxes": instances.gt_boxes.tensor, "labels": instances.gt_classes.long()}


def targets_to_instances(
    targets: dict[str, torch.Tensor], image_size: tuple[int, int]
) -> Instances:
    """sqr targets ({"boxes" [N, 4] absolute xyxy, "labels" [N]}) as detectron2 ground truth
    Instances(image_size, gt_boxes, gt_classes), the inverse of :func:`instances_to_targets`."""
    from detectron2.structures import Boxes, Instances

    return Instances(
        image_size, gt_boxes=Boxes(targets["boxes"]), gt_classes=targets["labels"].long()
    )


def to_sqr_inputs(batched_inputs: list[dict], input_format: str, *, training: bool) -> list[dict]:
    """detectron2 model inputs as sqr detector inputs (new dicts; the inputs are not changed).

    The sqr detector is asked for boxes in the size of the image it sees (``"height"`` and
    ``"width"`` are the image's own), so that :func:`detector_postprocess` rescales them to the
    requested size exactly as it does for detectron2's models.

    Args:
        batched_inputs: per image {"image": Tensor[3, H, W] in ``input_format``, and in training
            "instances" (see :func:`instances_to_targets`)}.
        input_format: see :func:`to_rgb`.
        training: whether to convert "instances" to "targets" (required then).

    Returns:
        Per image {"image": Tensor[3, H, W] RGB, "height": H, "width": W, ["targets"]}.
    """
    converted = []
    for x in batched_inputs:
        image = to_rgb(x["image"], input_format)
        sqr_input = {"image": image, "height": image.shape[-2], "width": image.shape[-1]}
        if training:
            if "instances" not in x:
                raise ValueError(
                    "Detectron2Adapter in training mode needs 'instances' in every input dict, "
                    f"got keys {sorted(x)}"
                )
            sqr_input["targets"] = instances_to_targets(x["instances"])
        converted.append(sqr_input)
    return converted


def outputs_to_instances(output: dict[str, torch.Tensor], image_size: tuple[int, int]) -> Instances:
    """One image's sqr eval output as detectron2 Instances.

    Args:
        output: {"boxes" [k, 4] absolute xyxy, "scores" [k], "labels" [k]}.
        image_size: (height, width) the boxes are in.

    Returns:
        Instances(image_size, pred_boxes=Boxes, scores, pred_classes).
    """
    from detectron2.structures import Boxes, Instances

    return Instances(
        image_size,
        pred_boxes=Boxes(output["boxes"]),
        scores=output["scores"],
        pred_classes=output["labels"],
    )


def instances_to_outputs(instances: Instances) -> dict[str, torch.Tensor]:
    """detectron2 predictions as sqr's eval output, the inverse of :func:`outputs_to_instances`."""
    return {
        "boxes": instances.pred_boxes.tensor,
        "scores": instances.scores,
        "labels": instances.pred_classes,
    }


def lr_factors_by_name(factors: Mapping[str, float]) -> Callable[[str], float]:
    """detectron2's ``get_default_optimizer_params(lr_factor_func=...)`` from sqr's
    ``lr_factors`` rule: a parameter whose full name contains a key gets that key's factor (the
    first match in the mapping's order wins), others 1.

    Args:
        factors: ``{substring: factor}``, e.g. ``{"backbone": 0.1}``.

    Returns:
        A function of the parameter name (``"detector.backbone.layer1.0.conv1.weight"``).
    """
    factors = dict(factors)

    def lr_factor(name: str) -> float:
        return next((f for key, f in factors.items() if key in name), 1.0)

    return lr_factor


class Detectron2Adapter(nn.Module):
    """An sqr detector behind detectron2's model interface.

    * Training: ``forward([{"image", "instances"}, ...])`` returns the detector's loss dict.
    * Evaluation: ``forward([{"image", "height", "width"}, ...])`` returns
      ``[{"instances": Instances((height, width), pred_boxes, scores, pred_classes)}]``, the
      boxes rescaled from the input image to ``height`` x ``width`` (default: the image's size)
      by detectron2's ``detector_postprocess``, which also clips them and drops empty ones.

    The mode comes from ``self.training`` (``train()``/``eval()`` reach the detector, a
    submodule). The detector is the module passed in, not a copy. Its state_dict keys are kept:
    ``state_dict()`` drops the ``detector.`` prefix of the submodule and ``load_state_dict``
    accepts keys with or without it, so checkpoints of sqr models (``sqr-train`` output, the
    converted detrex weights) load unchanged through detectron2's ``DetectionCheckpointer``,
    and this adapter's checkpoints load into the bare detector. ``named_parameters()`` keep the
    prefix (``detector.backbone...``), as do the missing/unexpected keys that
    ``load_state_dict`` reports; name-based rules such as detrex's ``lr_factor_func``
    (``"backbone" in name``) match either way.

    Args:
        detector: an sqr detector (:class:`sqr.modeling.detectors.base.QueryDetector`).
        input_format: channel order of the loader's images, ``"BGR"`` (detectron2's default
            ``INPUT.FORMAT``) or ``"RGB"`` (detrex's ``DetrDatasetMapper(img_format="RGB")``).
            sqr detectors take RGB.
    """

    def __init__(self, *, detector: nn.Module, input_format: str = "BGR") -> None:
        super().__init__()
        if input_format not in INPUT_FORMATS:
            raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {input_format!r}")
        self.detector = detector
        self.input_format = input_format
        self.register_state_dict_post_hook(_drop_detector_prefix)
        self.register_load_state_dict_pre_hook(_add_detector_prefix)

    @property
    def device(self) -> torch.device:
        return self.detector.device

    def forward(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor] | list[dict]:
        """
        Args:
            batched_inputs: detectron2 inputs, see :func:`to_sqr_inputs`; "height" and "width"
                (optional, eval) are the size to report boxes in.

        Returns:
            Training: the detector's weighted losses. Evaluation: per image {"instances"}.
        """
        inputs = to_sqr_inputs(batched_inputs, self.input_format, training=self.training)
        if self.training:
            return self.detector(inputs)
        from detectron2.modeling.postprocessing import detector_postprocess

        results = []
        for x, sqr_input, output in zip(batched_inputs, inputs, self.detector(inputs), strict=True):
            image_size = (sqr_input["height"], sqr_input["width"])
            instances = outputs_to_instances(output, image_size)
            height = x.get("height", image_size[0])
            width = x.get("width", image_size[1])
            results.append({"instances": detector_postprocess(instances, height, width)})
        return results


def _drop_detector_prefix(module, state_dict, prefix, local_metadata) -> None:
    """state_dict hook: ``{prefix}detector.X`` -> ``{prefix}X`` (order kept)."""
    inner = prefix + _DETECTOR
    for key in list(state_dict):
        value = state_dict.pop(key)
        state_dict[prefix + key[len(inner) :] if key.startswith(inner) else key] = value


def _add_detector_prefix(
    module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
) -> None:
    """load_state_dict pre-hook: ``{prefix}X`` -> ``{prefix}detector.X`` unless X has it."""
    inner = prefix + _DETECTOR
    for key in list(state_dict):
        if key.startswith(prefix) and not key.startswith(inner):
            state_dict[inner + key[len(prefix) :]] = state_dict.pop(key)
