"""Parameters and FLOPs of a detector, per module (fvcore), as detectron2's analyze_model does.

    sqr-analyze-model --config-file sqr_dab_detr_r50_50ep.py
    sqr-analyze-model --config-file deformable_detr_r50_50ep.py --tasks flop --height 800 \\
        --width 1216 --max-depth 3

FLOPs are of inference (the plain decoder: SQR changes training only) on one image of
``--height`` x ``--width`` pixels, counted by fvcore's tracer: one fused multiply-add is one
flop. fvcore has no formula for two operators these detectors spend time in, added here:
``scaled_dot_product_attention`` (its two matrix products, ``L*S*(E + Ev)`` per batch and head)
and ``grid_sampler_2d`` (bilinear sampling, 4 per output element: the deformable attention and
AdaMixer's sampling). Elementwise operators are not counted, as in fvcore and detectron2; any
other operator without a formula is listed as uncounted rather than guessed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import torch
from fvcore.nn import FlopCountAnalysis, flop_count_table, parameter_count_table
from fvcore.nn.jit_handles import get_shape
from torch import nn

from sqr.config import LazyConfig, instantiate
from sqr.engine import resolve_config_file

logger = logging.getLogger("sqr.analyze_model")


def _attention_flops(inputs: list, outputs: list) -> int:
    query, key, value = (get_shape(x) for x in inputs[:3])
    batch_heads = 1
    for size in query[:-2]:
        batch_heads *= size
    return batch_heads * query[-2] * key[-2] * (query[-1] + value[-1])


def _grid_sample_flops(inputs: list, outputs: list) -> int:
    elements = 1
    for size in get_shape(outputs[0]):
        elements *= size
    return 4 * elements


# Cheap (elementwise, reduction or layout) operators, left out of the count as fvcore does.
_ELEMENTWISE = (
    "add",
    "sub",
    "mul",
    "div",
    "rsub",
    "neg",
    "pow",
    "sqrt",
    "rsqrt",
    "exp",
    "log",
    "sigmoid",
    "softmax",
    "relu",
    "gelu",
    "sin",
    "cos",
    "cumsum",
    "sum",
    "mean",
    "max",
    "min",
    "clamp",
    "fill",
    "topk",
    "meshgrid",
    "pad",
    "max_pool2d",
    "floor",
    "ceil",
    "abs",
    "where",
)


def _is_elementwise(op: str) -> bool:
    return op.removeprefix("aten::").rstrip("_") in _ELEMENTWISE


class _SingleImage(nn.Module):
    """A detector called on one uint8 image tensor, returning tensors (what a tracer needs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = image.shape[-2:]
        output = self.model([{"image": image, "height": height, "width": width}])[0]
        return output["boxes"], output["scores"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Parameters and inference FLOPs of a detector, per module.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example:\n  sqr-analyze-model --config-file sqr_dab_detr_r50_50ep.py --tasks flop",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config path or name")
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=["parameter", "flop"],
        default=["parameter", "flop"],
        help="what to count",
    )
    parser.add_argument("--height", type=int, default=800, help="input image height (pixels)")
    parser.add_argument("--width", type=int, default=1216, help="input image width (pixels)")
    parser.add_argument("--max-depth", type=int, default=2, help="module depth of the table")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    """Print the requested tables; returns them by task."""
    args = build_parser().parse_args(argv)
    for name in ("height", "width", "max_depth"):
        if getattr(args, name) < 1:
            raise ValueError(
                f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}"
            )
    cfg = LazyConfig.apply_overrides(
        LazyConfig.load(resolve_config_file(args.config_file)), args.opts
    )
    model = instantiate(cfg.model).eval()
    tables = {}
    if "parameter" in args.tasks:
        tables["parameter"] = parameter_count_table(model, max_depth=args.max_depth)
    if "flop" in args.tasks:
        image = torch.randint(0, 256, (3, args.height, args.width), dtype=torch.uint8)
        with torch.no_grad():
            flops = FlopCountAnalysis(_SingleImage(model), (image,)).set_op_handle(
                "aten::scaled_dot_product_attention",
                _attention_flops,
                "aten::grid_sampler",
                _grid_sample_flops,
                "aten::grid_sampler_2d",
                _grid_sample_flops,
            )
            flops.unsupported_ops_warnings(False)
            flops.uncalled_modules_warnings(False)
            table = flop_count_table(flops, max_depth=args.max_depth + 1)
            uncounted = ", ".join(
                f"{op} x{n}"
                for op, n in sorted(flops.unsupported_ops().items())
                if not _is_elementwise(op)
            )
        tables["flop"] = (
            f"Inference on one {args.height}x{args.width} image: {flops.total() / 1e9:.2f} GFLOPs"
            f"\n{table}\nUncounted operators: {uncounted or 'none'}"
        )
    for task, table in tables.items():
        print(f"{task}s of {args.config_file}:\n{table}\n")
    return tables


def invoke_main() -> None:
    logging.basicConfig(level=logging.WARNING)
    main(sys.argv[1:])
