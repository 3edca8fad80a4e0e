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

logger = logging.getLogger("sqr.analyze_model")


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
    # Imported after parsing, so that --help answers without loading torch.
    import torch
    from fvcore.nn import FlopCountAnalysis, flop_count_table, parameter_count_table

    from sqr.config import LazyConfig, instantiate
    from sqr.engine import resolve_config_file
    from sqr.tools._flops import (
        SingleImage,
        attention_flops,
        grid_sample_flops,
        is_elementwise,
    )

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
            flops = FlopCountAnalysis(SingleImage(model), (image,)).set_op_handle(
                "aten::scaled_dot_product_attention",
                attention_flops,
                "aten::grid_sampler",
                grid_sample_flops,
                "aten::grid_sampler_2d",
                grid_sample_flops,
            )
            flops.unsupported_ops_warnings(False)
            flops.uncalled_modules_warnings(False)
            table = flop_count_table(flops, max_depth=args.max_depth + 1)
            uncounted = ", ".join(
                f"{op} x{n}"
                for op, n in sorted(flops.unsupported_ops().items())
                if not is_elementwise(op)
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
