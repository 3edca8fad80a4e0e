"""The graph that is exported: a detector's own evaluation code with tensors in and out.

:class:`DeployableDetector` feeds an already normalised batch to the detector's
:meth:`~sqr.modeling.detectors.QueryDetector.predict_images` and its last stage to
:meth:`~sqr.modeling.detectors.QueryDetector.postprocess`: the code that evaluation runs after
:meth:`~sqr.modeling.detectors.QueryDetector.preprocess_image`, so an exported model computes
what ``model(batched_inputs)`` computes. Only the padding to ``size_divisibility`` (AdaMixer's
32) happens here, because a deployed caller gives the graph one tensor, not a list of images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sqr.modeling.detectors import QueryDetector

__all__ = ["INPUT_NAMES", "OUTPUT_NAMES", "DeployableDetector", "normalise_image"]

#: The graph's inputs and outputs, in order (see :class:`DeployableDetector`).
INPUT_NAMES = ("images", "orig_sizes")
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


class DeployableDetector(nn.Module):
    """A detector in evaluation mode as a function of tensors.

    Every image of the batch fills the whole ``H x W`` tensor (no padding mask is given, so
    images of different sizes are exported one by one or padded by the caller, which changes
    the results of the models that mask padding, as batching does in evaluation).

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
        self, images: torch.Tensor, orig_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            images: float32 Tensor[N, 3, H, W], normalised (:func:`normalise_image`).
            orig_sizes: int64 Tensor[N, 2], (height, width) of each original image: the boxes
                are given in its pixels.

        Returns:
            ``boxes`` float32 [N, k, 4] xyxy in original pixels, ``scores`` [N, k], ``labels``
            int64 [N, k], ``keep`` bool [N, k] (False on the detections that the model's
            evaluation drops: boxes that clipping to the image emptied, for detrex's models).
            ``k`` is ``select_box_nums_for_evaluation`` (at most queries x classes).
        """
        images, padding = self._pad(images)
        logits, boxes, _ = self.detector.predict_images(images, padding)
        return self.detector.postprocess(logits[-1], boxes[-1], orig_sizes)

    def _pad(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch padded at the bottom and right to multiples of ``size_divisibility``, as
        :func:`sqr.data.batching.batch_images` pads it, and the padding mask Bool[N, Hp, Wp]."""
        divisor = self.detector.size_divisibility
        height, width = images.shape[-2:]
        if divisor > 1:
            images = F.pad(images, (0, (-width) % divisor, 0, (-height) % divisor))
        rows = torch.arange(images.shape[-2], device=images.device)[:, None] >= height
        cols = torch.arange(images.shape[-1], device=images.device)[None, :] >= width
        padding = (rows | cols).expand(images.shape[0], -1, -1)
        return images, padding
