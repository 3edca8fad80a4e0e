"""Deploy a trained detector: its evaluation path as an ONNX graph or a ``torch.export`` program,
checked against eager PyTorch (``sqr-export``, :mod:`sqr.tools.export_model`).

The graph takes normalised images padded into one batch ``[N, 3, H, W]``, the original sizes
``[N, 2]`` and each image's size in the batch ``[N, 2]`` (:func:`batch_for_graph` makes them) and
returns the model's own top-k detections in original pixels (:class:`DeployableDetector`);
:class:`ExportedDetector` runs it with the PyTorch detector's evaluation contract. onnx and
onnxruntime come with the extra ``pip install 'sqr[deploy]'`` and are imported on use.
"""

from .exporter import (
    ONNX_OPSET,
    UnexportableOptionError,
    export_onnx,
    export_program,
    fixed_size_reason,
    prepare_for_export,
)
from .metadata import METADATA_KEY, ExportMetadata
from .module import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    DeployableDetector,
    batch_for_graph,
    normalise_image,
)
from .parity import BOX_TOLERANCE, SCORE_TOLERANCE, Parity, ParityError, compare_detections
from .runtime import ExportedDetector

__all__ = [
    "BOX_TOLERANCE",
    "INPUT_NAMES",
    "METADATA_KEY",
    "ONNX_OPSET",
    "OUTPUT_NAMES",
    "SCORE_TOLERANCE",
    "DeployableDetector",
    "ExportMetadata",
    "ExportedDetector",
    "Parity",
    "ParityError",
    "UnexportableOptionError",
    "batch_for_graph",
    "compare_detections",
    "export_onnx",
    "export_program",
    "fixed_size_reason",
    "normalise_image",
    "prepare_for_export",
]
