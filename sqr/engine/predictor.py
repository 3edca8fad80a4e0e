"""Run a trained detector on images given as files, PIL images or arrays."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, TypeAlias, overload

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image as PILImage
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from sqr.config import LazyConfig, instantiate
from sqr.data.catalog import get_metadata

# read_image's own conversion of high-bit-depth images, reused for in-memory PIL images.
from sqr.data.mapper import _HIGH_BIT_DEPTH_MODES, _high_bit_depth_to_uint8, read_image

from .checkpoint import load_trained_weights
from .defaults import resolve_device
from .ema import trained_weights

__all__ = ["ImageInput", "Predictor"]

logger = logging.getLogger(__name__)

# The exported backends and the file each runs (written by sqr-export).
_EXPORTED_SUFFIX = {"onnxruntime": ".onnx", "torch-export": ".pt2"}

#: One image: a file path, a PIL image, or an H x W x 3 uint8 RGB array.
ImageInput: TypeAlias = str | os.PathLike | PILImage.Image | np.ndarray


def _from_pil(image: PILImage.Image) -> torch.Tensor:
    """The uint8 Tensor[3, H, W] that :func:`read_image` gives for the same image in a file.

    Raises:
        ValueError: the image has no pixels (PIL makes 0 x N images; image files cannot be).
    """
    if 0 in image.size:
        raise ValueError(
            f"Predictor got an empty PIL image of {image.size[0]} x {image.size[1]} pixels "
            f"(width x height, mode {image.mode}); it needs at least one pixel"
        )
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        # convert("RGB") would clip 16-bit values to 255 instead of scaling them.
        gray = _high_bit_depth_to_uint8(np.asarray(image), image.mode, "<PIL image>")
        return torch.from_numpy(np.repeat(gray[np.newaxis], 3, axis=0))
    return F.pil_to_tensor(image.convert("RGB"))


def _from_array(array: np.ndarray) -> torch.Tensor:
    """An H x W x 3 uint8 RGB array as uint8 Tensor[3, H, W].

    Raises:
        ValueError: the array is not H x W x 3 uint8 with H, W > 0.
    """
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        hint = ""
        if array.ndim == 2:
            hint = "; a grayscale array can be stacked: np.stack([a] * 3, axis=-1)"
        elif array.ndim == 3 and array.shape[2] == 4:
            hint = "; drop the alpha channel: a[..., :3]"
        elif array.ndim == 3 and array.shape[0] == 3:
            hint = "; a channels-first array needs a.transpose(1, 2, 0)"
        elif array.dtype != np.uint8:
            hint = "; scale to 0..255 and convert with .astype(np.uint8)"
        raise ValueError(
            "Predictor expects an image array of shape H x W x 3 and dtype uint8 in RGB order, "
            f"got shape {array.shape} and dtype {array.dtype}{hint}"
        )
    # Always a C-ordered copy: the caller's array may be read-only (np.asarray of a PIL image)
    # or have negative strides (image[..., ::-1]), which torch.from_numpy refuses.
    return torch.from_numpy(np.array(array, order="C")).permute(2, 0, 1)


def _to_tensor(image: ImageInput) -> torch.Tensor:
    """Decode one input to uint8 Tensor[3, H, W] RGB."""
    if isinstance(image, str | os.PathLike):
        return read_image(os.fspath(image))
    if isinstance(image, PILImage.Image):
        return _from_pil(image)
    if isinstance(image, np.ndarray):
        return _from_array(image)
    raise TypeError(
        "Predictor takes a file path, a PIL image or an H x W x 3 uint8 RGB numpy array (or a "
        f"list of them), got {type(image).__name__}"
    )


def _dataset_class_names(cfg: DictConfig) -> list[str]:
    """Class names from the metadata of the config's test dataset, else its evaluator's dataset.

    Returns:
        Names in contiguous-id order, or ``[]`` when neither dataset is a registered, readable
        dataset (e.g. COCO's annotations are not on this machine).
    """
    test_dataset = OmegaConf.select(cfg, "dataloader.test.dataset")
    if isinstance(test_dataset, Sequence) and not isinstance(test_dataset, str) and test_dataset:
        test_dataset = test_dataset[0]  # several names: they share one label space
    candidates = [test_dataset, OmegaConf.select(cfg, "dataloader.evaluator.dataset_name")]
    for name in dict.fromkeys(c for c in candidates if isinstance(c, str)):
        try:
            return list(get_metadata(name).thing_classes)
        except (KeyError, FileNotFoundError) as e:
            logger.warning("Predictor: no class names from dataset %r: %s", name, e)
    logger.warning("Predictor: the config names no readable dataset; labels are named class_<id>")
    return []


class Predictor:
    """Run a trained detector on single images, as detectron2's ``DefaultPredictor`` does.

    Builds ``cfg.model`` in eval mode, loads trained weights (the checkpoint's EMA where the
    config trains one, as its evaluation does; a checkpoint of another model is refused, see
    :func:`~sqr.engine.load_trained_weights`), and preprocesses each image with the
    config's test transform, ``cfg.dataloader.test.mapper.augmentation``, so that predictions
    match those of evaluation. Example::

        predictor = Predictor("projects/sqr/configs/X.py", "output/X/model_final.pth")
        out = predictor("street.jpg")
        out["boxes"], out["scores"], out["labels"], out["class_names"]

    Images are **RGB**, like torchvision and PIL, not OpenCV's BGR that detectron2's
    ``DefaultPredictor`` takes: convert an OpenCV image with ``image[..., ::-1]``.

    Class names come from the metadata of ``cfg.dataloader.test.dataset`` (the first one when it
    names several), else of ``cfg.dataloader.evaluator.dataset_name``; when neither is a
    registered dataset whose files are on this machine, labels are named ``class_<id>``. A label
    past the dataset's classes (a model with more classes than its data) is named the same way.
    Reading the metadata of a built-in synthetic dataset generates it on first use.

    With ``backend="onnxruntime"`` (or ``"torch-export"``) ``weights`` is a model exported by
    ``sqr-export`` (``model.onnx``, run by onnxruntime on the CPU; ``model.pt2``), which gives
    the PyTorch backend's detections (README, Deploy); the config still gives the test
    transform and the class names. Every backend batches the images of a call as evaluation
    does: padded to the largest, each with its padding mask (:func:`sqr.export.batch_for_graph`).

    Args:
        cfg: The training config, or the path of its file (loaded with ``LazyConfig.load``).
        weights: Checkpoint to load; default ``cfg.train.init_checkpoint``.
        device: Torch device name; default ``cfg.train.device`` ("auto": CUDA when visible).
        batch_size: Images per forward pass when called with a list.
        backend: ``"pytorch"``, ``"onnxruntime"`` or ``"torch-export"``.

    Attributes:
        model: The detector, in eval mode on :attr:`device` (an
            :class:`sqr.export.ExportedDetector` for the exported backends).
        device: The torch device it runs on.
        transform: The test transform.
        class_names: Names of the contiguous labels ``0..K-1`` (``[]`` when unknown).
    """

    def __init__(
        self,
        cfg: DictConfig | str | os.PathLike,
        weights: str | None = None,
        *,
        device: str | None = None,
        batch_size: int = 1,
        backend: str = "pytorch",
    ) -> None:
        if backend not in _EXPORTED_SUFFIX and backend != "pytorch":
            choices = ", ".join(["pytorch", *_EXPORTED_SUFFIX])
            raise ValueError(f"Predictor backend must be one of {choices}, got {backend!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Predictor batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(cfg, str | os.PathLike):
            cfg = LazyConfig.load(os.fspath(cfg))
        augmentation = OmegaConf.select(cfg, "dataloader.test.mapper.augmentation")
        if augmentation is None:
            raise ValueError(
                "Predictor needs the test transform at cfg.dataloader.test.mapper.augmentation; "
                "the config has none"
            )
        self.batch_size = batch_size
        self.transform = instantiate(augmentation)
        self.class_names = _dataset_class_names(cfg)
        if backend in _EXPORTED_SUFFIX:
            suffix = _EXPORTED_SUFFIX[backend]
            if not weights or not os.fspath(weights).endswith(suffix):
                raise ValueError(
                    f"Predictor backend {backend!r} needs weights=<the exported {suffix} file>, "
                    f"got {weights!r}"
                )
            from sqr.export import ExportedDetector  # onnxruntime is an extra: import on use

            self.device = torch.device("cpu")
            self.model = ExportedDetector(weights)
            return
        model = instantiate(cfg.model)
        load_trained_weights(
            model,
            weights or cfg.train.get("init_checkpoint", ""),
            purpose="Predictor",
            weights=trained_weights(cfg),
        )
        self.device = torch.device(resolve_device(device or cfg.train.get("device", "auto")))
        self.model = model.to(self.device).eval()

    def preprocess(self, image: ImageInput) -> dict[str, Any]:
        """One image as the model takes it: decoded and resized by the test transform, as the
        test mapper does. Every backend runs on this, and ``sqr-export`` checks its graphs on it.

        Args:
            image: as in :meth:`__call__` (one image).

        Returns:
            ``{"image": uint8 Tensor[3, H, W] RGB after the test transform, "height": int,
            "width": int}``, the last two the original image's size (boxes come back in its
            pixels). The exported graphs take it normalised and batched
            (:func:`sqr.export.batch_for_graph`).

        Raises:
            As :meth:`__call__`.
        """
        tensor = _to_tensor(image)
        resized = self.transform({"image": tv_tensors.Image(tensor)})["image"]
        # The model reports boxes in height x width: the original image's pixels.
        height, width = tensor.shape[-2:]
        return {"image": resized.as_subclass(torch.Tensor), "height": height, "width": width}

    def _format(self, output: dict[str, torch.Tensor]) -> tuple[dict[str, Any], int]:
        """One image's model output on CPU without non-finite predictions.

        Returns:
            ``(prediction, number of predictions dropped)``.
        """
        boxes, scores = output["boxes"].cpu(), output["scores"].cpu()
        labels = output["labels"].cpu().to(torch.int64)
        finite = torch.isfinite(boxes).all(1) & torch.isfinite(scores)
        boxes, scores, labels = boxes[finite], scores[finite], labels[finite]
        names = [
            self.class_names[i] if i < len(self.class_names) else f"class_{i}"
            for i in labels.tolist()
        ]
        prediction = {"boxes": boxes, "scores": scores, "labels": labels, "class_names": names}
        return prediction, len(finite) - int(finite.sum())

    @overload
    def __call__(self, image: ImageInput) -> dict[str, Any]: ...

    @overload
    def __call__(self, image: Sequence[ImageInput]) -> list[dict[str, Any]]: ...

    def __call__(self, image):
        """Detect objects in one image, or in a list of images ``batch_size`` at a time.

        Predictions whose box or score is not finite are dropped, with a warning that counts
        them; everything else is the model's output unchanged (no score threshold).

        Args:
            image: A path (decoded like training images: 16-bit images are scaled to 8 bits), a
                PIL image (converted the same way), or an H x W x 3 uint8 array in RGB order
                (not BGR); or a list or tuple of these.

        Returns:
            For one image, a dict on CPU with ``"boxes"``: float Tensor[N, 4] XYXY in the
            original image's pixels, ``"scores"``: Tensor[N], ``"labels"``: int64 Tensor[N]
            (contiguous class ids) and ``"class_names"``: list of N names; for a list, a list of
            such dicts in the same order.

        Raises:
            ValueError: an array of the wrong shape or dtype.
            TypeError: an input of another type.
            sqr.data.mapper.ImageReadError: a file that is missing or cannot be decoded.
        """
        images = list(image) if isinstance(image, list | tuple) else [image]
        predictions, dropped = [], 0
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                inputs = [self.preprocess(x) for x in images[start : start + self.batch_size]]
                for output in self.model(inputs):
                    prediction, num_dropped = self._format(output)
                    predictions.append(prediction)
                    dropped += num_dropped
        if dropped:
            logger.warning(
                "Predictor: dropped %d prediction(s) with a non-finite box or score; the model "
                "produced NaN or infinite outputs",
                dropped,
            )
        return predictions if isinstance(image, list | tuple) else predictions[0]
