"""The graph that is exported: a detector's own evaluation code with tensors in and out.

:class:`DeployableDetector` feeds an already normalised, padded batch to the detector's
:meth:`~sqr.modeling.detectors.QueryDetector.predict_images` and its last stage to
:meth:`~sqr.modeling.detectors.QueryDetector.postprocess`: the code that evaluation runs after
:meth:`~sqr.modeling.detectors.QueryDetector.preprocess_image`, so an exported model computes
what ``model(batched_inputs)`` computes, mixed image sizes included.

Preprocessing, done by the caller (:func:`batch_for_graph`, which the exported backends of
:class:`sqr.engine.Predictor` use): each image after the config's test transform
(:meth:`sqr.engine.Predictor.preprocess`) is normalised, ``(image - pixel_mean) / pixel_std`` on
the 0-255 scale (:func:`normalise_image`), and the batch is padded with zeros at the bottom and
right to its largest height and width, as :func:`sqr.data.batching.batch_images` pads it; the
graph gets each image's own size in that tensor (``image_sizes``) and builds from it the padding
mask of evaluation. The padding to ``size_divisibility`` (AdaMixer's 32) happens in the graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sqr.modeling.detectors import QueryDetector

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "DeployableDetector",
    "batch_for_graph",
    "normalise_image",
]

#: The graph's inputs and outputs, in order (see :class:`DeployableDetector`).
INPUT_NAMES = ("images", "orig_sizes", "image_sizes")
OUTPUT_NAMES = ("boxes", "scores", "labels", "keep")


def normalise_image(
    image: torch.Tensor, pixel_mean: torch.Tensor, pixel_std: torch.Tensor
) -> torch.Tensor:
    """The graph's input for one image: what :meth:`QueryDetector.preprocess_image` computes
    before padding.

    Args:
        image: uint8 Tensor[3, H, W], RGB, after the config's test transform.
        pixel_mean, pixel_std: Tensor[3, 1, 1] or [3], the model's normalisation (0-255 scale).

    Returns:
        float32 Tensor[3, H, W]: ``(image - pixel_mean) / pixel_std``.
    """
    return (image.float() - pixel_mean.view(3, 1, 1)) / pixel_std.view(3, 1, 1)


def batch_for_graph(
    inputs: Sequence[dict], pixel_mean: torch.Tensor, pixel_std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The graph's inputs for a list of model inputs, batched as evaluation batches them.

    Args:
        inputs: per image "image" uint8 [3, H_i, W_i] (after the test transform) and optionally
            "height", "width" of the original image (default H_i, W_i).
        pixel_mean, pixel_std: the model's normalisation (0-255 scale).

    Returns:
        ``images`` float32 [N, 3, H, W]: each image normalised at the top left of zeros, H and
        W the largest H_i and W_i; ``orig_sizes`` int64 [N, 2], (height, width) of each
        original image; ``image_sizes`` int64 [N, 2], (H_i, W_i).
    """
    if not inputs:
        raise ValueError("batch_for_graph got no inputs")
    image_sizes = torch.tensor([tuple(x["image"].shape[-2:]) for x in inputs], dtype=torch.int64)
    height, width = image_sizes.max(0).values.tolist()
    images = torch.zeros(len(inputs), 3, height, width)
    for canvas, x in zip(images, inputs, strict=True):
        image = normalise_image(x["image"].cpu(), pixel_mean.cpu(), pixel_std.cpu())
        canvas[:, : image.shape[-2], : image.shape[-1]] = image
    orig_sizes = torch.tensor(
        [
            (int(x.get("height", x["image"].shape[-2])), int(x.get("width", x["image"].shape[-1])))
            for x in inputs
        ],
        dtype=torch.int64,
    )
    return images, orig_sizes, image_sizes


class DeployableDetector(nn.Module):
    """A detector in evaluation mode as a function of tensors.

    Images of different sizes share one batch as in evaluation: padded by the caller
    (:func:`batch_for_graph`), each with its own size in ``image_sizes``, from which the graph
    builds the padding mask the detector uses.

    Args:
        detector: the detector; it must be in evaluation mode (the graph is its eval path).
    """

    def __init__(self, detector: QueryDetector) -> None:
        super().__init__()
        if detector.training:
            raise ValueError(
                f"DeployableDetector wraps {type(detector).__name__} in training mode; call "
                ".eval() first: the exported graph is the evaluation path"
            )
        self.detector = detector
        # Exporters restore the wrapper's mode afterwards; a wrapper left in training mode
        # would put the detector back into training with it.
        self.eval()

    def forward(
        self,
        images: torch.Tensor,
        orig_sizes: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            images: float32 Tensor[N, 3, H, W], normalised, each image at the top left of
                zeros (:func:`batch_for_graph`).
            orig_sizes: int64 Tensor[N, 2], (height, width) of each original image: the boxes
                are given in its pixels.
            image_sizes: int64 Tensor[N, 2], (height, width) of each image in ``images``; None:
                every image fills H x W (the exported graph always takes it).

        Returns:
            ``boxes`` float32 [N, k, 4] xyxy in original pixels, ``scores`` [N, k], ``labels``
            int64 [N, k], ``keep`` bool [N, k] (False on the detections that the model's
            evaluation drops: boxes that clipping to the image emptied, for detrex's models).
            ``k`` is ``select_box_nums_for_evaluation`` (at most queries x classes).
        """
        if image_sizes is None:
            image_sizes = images.new_tensor(images.shape[-2:], dtype=torch.int64).expand(
                images.shape[0], 2
            )
        images, padding = self._pad(images, image_sizes)
        logits, boxes, _ = self.detector.predict_images(images, padding)
        return self.detector.postprocess(logits[-1], boxes[-1], orig_sizes)

    def _pad(
        self, images: torch.Tensor, image_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch padded at the bottom and right to multiples of ``size_divisibility``, as
        :func:`sqr.data.batching.batch_images` pads it, and the padding mask Bool[N, Hp, Wp]:
        True outside each image's ``image_sizes``."""
        divisor = self.detector.size_divisibility
        height, width = images.shape[-2:]
        if divisor > 1:
            images = F.pad(images, (0, (-width) % divisor, 0, (-height) % divisor))
        rows = torch.arange(images.shape[-2], device=images.device)
        cols = torch.arange(images.shape[-1], device=images.device)
        sizes = image_sizes.to(images.device)
        outside_rows = rows[None, :, None] >= sizes[:, 0, None, None]
        outside_cols = cols[None, None, :] >= sizes[:, 1, None, None]
        return images, outside_rows | outside_cols
