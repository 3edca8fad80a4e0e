"""Export a detector's evaluation path to ONNX or to a ``torch.export`` ExportedProgram.

The exporter was chosen by measurement (README, Deploy): ``torch.onnx.export`` with TorchScript
tracing (``dynamo=False``) exports every detector, its graphs match eager PyTorch to 1e-4 px, and
it takes seconds; the dynamo exporter gave the same graphs for DAB-DETR but took minutes per
tiny model. Tracing records Python ints as constants; the layers read the level sizes from
tensor shapes while tracing (:func:`~sqr.layers.ms_deform_attn.level_sizes`), so the batch and
the image size are dynamic axes of every detector's graph, except where
:func:`fixed_size_reason` names a reason.

Deformable attention is exported through its PyTorch path (``F.grid_sample``: ONNX
``GridSample``, opset >= 16): the model is moved to the CPU and every
:class:`~sqr.layers.ms_deform_attn.MultiScaleDeformableAttention` and
:class:`~sqr.layers.ms_deform_attn_v2.DeformableAttentionV2` is set to the ``"pytorch"``
backend, so the Triton kernels are never traced.
"""

from __future__ import annotations

import io
import logging
import warnings

import torch

from sqr.layers.ms_deform_attn import set_backend
from sqr.layers.ms_deform_attn_v2 import DeformableAttentionV2
from sqr.modeling.detectors import QueryDetector
from sqr.utils.file_io import write_atomically

from .metadata import METADATA_KEY, ExportMetadata
from .module import INPUT_NAMES, OUTPUT_NAMES, DeployableDetector
from .runtime import DEPLOY_EXTRA_HINT

__all__ = [
    "ONNX_OPSET",
    "UnexportableOptionError",
    "export_onnx",
    "export_program",
    "fixed_size_reason",
    "prepare_for_export",
]

logger = logging.getLogger(__name__)

#: GridSample joined the default ONNX domain in opset 16; 17 adds LayerNormalization.
ONNX_OPSET = 17


class UnexportableOptionError(ValueError):
    """A model option whose behaviour the exported graph cannot reproduce; names the option."""


def fixed_size_reason(detector: QueryDetector) -> str | None:
    """Why tracing fixes ``detector``'s image size in the ONNX graph, or None when the size is
    a dynamic axis (a ``torch.export`` program always has the example's size)."""
    for name, module in detector.named_modules():
        if isinstance(module, DeformableAttentionV2) and module.method == "discrete":
            return (
                f"{name}: RT-DETRv2's discrete sampling (cross_attn_method='discrete') builds "
                "each level's size into a tensor from Python ints, which the trace records as "
                "constants"
            )
    return None


def prepare_for_export(detector: QueryDetector) -> QueryDetector:
    """``detector`` ready to trace: in evaluation mode, on the CPU, deformable attention on its
    PyTorch path; training-only options are logged as ignored.

    Raises:
        UnexportableOptionError: an option the graph cannot reproduce, named.
    """
    if not isinstance(detector, QueryDetector):
        raise TypeError(
            f"sqr-export exports the package's query detectors (QueryDetector), got "
            f"{type(detector).__name__}"
        )
    detector = detector.eval().cpu()
    for name, module in detector.named_modules():
        if getattr(module, "checkpoint_recollected", False):
            logger.info(
                "%s.checkpoint_recollected=True is ignored: activation checkpointing only runs "
                "in training, the exported graph is the evaluation path",
                name or type(detector).__name__,
            )
    deformable = set_backend(detector, "pytorch")
    for module in detector.modules():
        if isinstance(module, DeformableAttentionV2):  # RT-DETRv2's, which set_backend skips
            module.backend = "pytorch"
            deformable += 1
    if deformable:
        logger.info("Multi-scale deformable attention exports through its PyTorch path")
    for name, param in detector.named_parameters():
        if param.dtype != torch.float32:
            raise UnexportableOptionError(
                f"parameter {name} is {param.dtype}: the exported graph is float32; export "
                "the float32 model (mixed precision is a training and inference-time option)"
            )
    return detector


def _exp2(g, x):
    # torch.exp2 (AdaMixer's box scales) has no TorchScript-ONNX symbolic: 2 ** x is Pow(2, x).
    return g.op("Pow", g.op("Constant", value_t=torch.tensor(2.0)), x)


def _metadata(detector: QueryDetector, exporter: str, fixed: tuple[int, int] | None) -> str:
    return ExportMetadata(
        detector=type(detector).__name__,
        exporter=exporter,
        pixel_mean=tuple(detector.pixel_mean.flatten().tolist()),
        pixel_std=tuple(detector.pixel_std.flatten().tolist()),
        num_classes=detector.num_classes,
        fixed_size=fixed,
    ).to_json()


def _example(
    images: torch.Tensor, orig_sizes: torch.Tensor, image_sizes: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The example inputs to trace, ``image_sizes`` defaulting to the whole tensor."""
    if image_sizes is None:
        image_sizes = torch.tensor([images.shape[-2:]], dtype=torch.int64)
        image_sizes = image_sizes.expand(images.shape[0], 2)
    return images, orig_sizes, image_sizes.to(torch.int64).contiguous()


def export_onnx(
    detector: QueryDetector,
    images: torch.Tensor,
    orig_sizes: torch.Tensor,
    path: str,
    image_sizes: torch.Tensor | None = None,
) -> ExportMetadata:
    """Trace ``detector``'s evaluation on an example batch and write it as ONNX to ``path``
    (atomically: a failed export leaves an earlier file untouched).

    Args:
        detector: from :func:`prepare_for_export`.
        images: example float32 Tensor[N, 3, H, W], normalised; a fixed-size graph takes H x W.
        orig_sizes: example int64 Tensor[N, 2].
        path: the ``.onnx`` file.
        image_sizes: example int64 Tensor[N, 2] (see :class:`DeployableDetector`); default:
            every image fills H x W.

    Returns:
        The metadata written into the file (``metadata_props``).
    """
    try:
        import onnx
    except ImportError as e:
        raise ImportError(f"ONNX export needs onnx ({e}); {DEPLOY_EXTRA_HINT}") from None
    reason = fixed_size_reason(detector)
    fixed = tuple(images.shape[-2:]) if reason else None
    if reason:
        logger.info("Image size fixed at %d x %d: %s", *fixed, reason)
    axes = {name: {0: "batch"} for name in (*INPUT_NAMES, *OUTPUT_NAMES)}
    if fixed is None:
        axes["images"].update({2: "height", 3: "width"})
    torch.onnx.register_custom_op_symbolic("aten::exp2", _exp2, ONNX_OPSET)
    buffer = io.BytesIO()  # in memory: nothing half-written lands next to ``path``
    with warnings.catch_warnings():
        # The tracer warns about every Python int it records; fixed_size_reason says which
        # ones matter, and the parity check measures the result.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # The TorchScript exporter is chosen on purpose (the module docstring says why).
        warnings.filterwarnings(
            "ignore", message="You are using the legacy TorchScript", category=DeprecationWarning
        )
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            DeployableDetector(detector),
            _example(images, orig_sizes, image_sizes),
            buffer,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
        )
    model = onnx.load_from_string(buffer.getvalue())
    text = _metadata(detector, "torchscript", fixed)
    model.metadata_props.add(key=METADATA_KEY, value=text)
    onnx.checker.check_model(model, full_check=True)
    write_atomically(path, lambda f: f.write(model.SerializeToString()))
    return ExportMetadata.from_json(text, path)


def export_program(
    detector: QueryDetector,
    images: torch.Tensor,
    orig_sizes: torch.Tensor,
    path: str,
    image_sizes: torch.Tensor | None = None,
) -> ExportMetadata:
    """``torch.export`` of ``detector``'s evaluation, saved with ``torch.export.save`` to
    ``path`` (a ``.pt2`` archive, written atomically); arguments as :func:`export_onnx`'s.

    The batch is a dynamic dimension; the image size is the example's (``torch.export``
    specialises the level sizes that the layers read as ints outside ``torch.jit.trace``, and
    a fixed size keeps every detector's program on one code path).
    """
    batch = torch.export.Dim("batch", min=1, max=1024)
    shapes = {name: {0: batch} for name in INPUT_NAMES}
    images, orig_sizes, image_sizes = _example(images, orig_sizes, image_sizes)
    if images.shape[0] == 1:  # torch.export specialises a size-1 example dimension
        images, orig_sizes = images.repeat(2, 1, 1, 1), orig_sizes.repeat(2, 1)
        image_sizes = image_sizes.repeat(2, 1)
    with torch.no_grad():
        program = torch.export.export(
            DeployableDetector(detector), (images, orig_sizes, image_sizes), dynamic_shapes=shapes
        )
    fixed = tuple(images.shape[-2:])
    text = _metadata(detector, "torch.export", fixed)
    write_atomically(
        path, lambda f: torch.export.save(program, f, extra_files={METADATA_KEY: text})
    )
    return ExportMetadata.from_json(text, path)
