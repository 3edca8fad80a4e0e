"""Run an exported detector: an ONNX file in onnxruntime, or a ``torch.export`` archive.

:class:`ExportedDetector` keeps the evaluation contract of the PyTorch detector
(``model(batched_inputs)`` -> one dict per image), so :class:`sqr.engine.Predictor` and the
export's parity check feed both the same inputs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from .metadata import METADATA_KEY, ExportMetadata
from .module import INPUT_NAMES, batch_for_graph

__all__ = ["DEPLOY_EXTRA_HINT", "ExportedDetector", "import_onnxruntime"]

DEPLOY_EXTRA_HINT = "install the deployment extra: pip install 'sqr[deploy]'"


def import_onnxruntime():
    """The ``onnxruntime`` module, or an ImportError that says how to install it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(
            f"running an ONNX model needs onnxruntime ({e}); {DEPLOY_EXTRA_HINT}"
        ) from None
    return onnxruntime


class ExportedDetector:
    """An exported detector (``.onnx``: onnxruntime on CPU; ``.pt2``: ``torch.export.load``).

    Args:
        path: the exported file, as ``sqr-export`` writes it.

    Attributes:
        metadata: how the graph was exported and what it takes (:class:`ExportMetadata`).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"exported model {self.path!r} does not exist")
        if self.path.endswith(".onnx"):
            ort = import_onnxruntime()
            self._session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
            # A model that ignores padding in evaluation (mask_padding_in_eval=False) never
            # reads image_sizes, and the exporter drops an input nothing reads.
            self._input_names = {x.name for x in self._session.get_inputs()}
            props = self._session.get_modelmeta().custom_metadata_map
            text = props.get(METADATA_KEY)
        elif self.path.endswith(".pt2"):
            extra = {METADATA_KEY: ""}
            self._program = torch.export.load(self.path, extra_files=extra).module()
            text = extra[METADATA_KEY] or None
        else:
            raise ValueError(f"exported model {self.path!r}: expected a .onnx or .pt2 file")
        if text is None:
            raise ValueError(
                f"{self.path}: no {METADATA_KEY!r} metadata; export the model with sqr-export"
            )
        self.metadata = ExportMetadata.from_json(text, self.path)
        self._mean = torch.tensor(self.metadata.pixel_mean)
        self._std = torch.tensor(self.metadata.pixel_std)

    def run(
        self, images: torch.Tensor, orig_sizes: torch.Tensor, image_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The graph on one batch (see :class:`~sqr.export.DeployableDetector`).

        Args:
            images: float32 Tensor[N, 3, H, W], normalised and padded (:func:`batch_for_graph`).
            orig_sizes: int64 Tensor[N, 2], (height, width) of the original images.
            image_sizes: int64 Tensor[N, 2], (height, width) of each image in ``images``.

        Returns:
            ``(boxes [N, k, 4], scores [N, k], labels [N, k], keep [N, k])`` on CPU.

        Raises:
            ValueError: a batch of another size than a fixed-size graph's.
        """
        fixed = self.metadata.fixed_size
        if fixed is not None and tuple(images.shape[-2:]) != fixed:
            raise ValueError(
                f"{self.path}: the graph was exported for {fixed[0]} x {fixed[1]} batches (its "
                f"image size is fixed, see the README's Deploy section), got "
                f"{images.shape[-2]} x {images.shape[-1]}"
            )
        feeds = (
            images.detach().to("cpu", torch.float32).contiguous(),
            orig_sizes.detach().to("cpu", torch.int64).contiguous(),
            image_sizes.detach().to("cpu", torch.int64).contiguous(),
        )
        if hasattr(self, "_session"):
            arrays = {
                name: x.numpy()
                for name, x in zip(INPUT_NAMES, feeds, strict=True)
                if name in self._input_names
            }
            return tuple(torch.from_numpy(x) for x in self._session.run(None, arrays))
        with torch.no_grad():
            return tuple(self._program(*feeds))

    def __call__(self, batched_inputs: Sequence[dict]) -> list[dict]:
        """Detections of each input, as the PyTorch detector's evaluation gives them: the
        inputs run as one batch, padded to its largest image as evaluation pads it
        (:func:`~sqr.export.batch_for_graph`).

        Args:
            batched_inputs: per image "image" uint8 [3, H, W] (after the test transform) and
                optionally "height", "width" of the original image (default H, W).

        Returns:
            Per image {"boxes" [k, 4] xyxy in height x width, "scores" [k], "labels" [k]}.

        Raises:
            ValueError: a fixed-size graph and a batch whose largest height and width are
                not its size.
        """
        graph_inputs = batch_for_graph(batched_inputs, self._mean, self._std)
        return [
            {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
            for boxes, scores, labels, keep in zip(*self.run(*graph_inputs), strict=True)
        ]
