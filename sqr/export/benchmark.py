r"""CPU latency per image of a detector's evaluation graph: eager PyTorch against onnxruntime.

    python -m sqr.export.benchmark --config-file dab_detr_r50_50ep.py --height 800 --width 1216 \
        --batch-sizes 1 4 --threads 2

Both run the same graph (:class:`~sqr.export.DeployableDetector`: backbone to top-k boxes, on
normalised images of one size) with the config's model at random initialisation (weights do
not change the time); the ONNX graph is exported at that size into a temporary directory.
Prints one row per batch size: milliseconds per image, median over ``--iters`` runs after
``--warmup``.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence

import torch

from sqr.config import instantiate
from sqr.engine import load_config

from .exporter import export_onnx, prepare_for_export
from .module import DeployableDetector
from .runtime import import_onnxruntime

__all__ = ["inference_latency", "main"]


def _median_seconds(run: Callable[[], object], iters: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def inference_latency(
    detector: torch.nn.Module,
    height: int,
    width: int,
    batch_sizes: Sequence[int] = (1, 4),
    *,
    iters: int = 5,
    warmup: int = 2,
    threads: int | None = None,
) -> list[dict[str, float]]:
    """Median ms per image of eager PyTorch and onnxruntime (CPU) per batch size.

    Args:
        detector: a query detector (its weights do not matter).
        height, width: the (already transformed) image size.
        batch_sizes: images per run.
        threads: intra-op threads of both runtimes (default: each one's own default).

    Returns:
        Per batch size {"batch", "eager_ms", "onnxruntime_ms"}.
    """
    ort = import_onnxruntime()
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _measure(
            ort, prepare_for_export(detector), height, width, batch_sizes, iters, warmup, threads
        )
    finally:
        torch.set_num_threads(previous)


def _measure(ort, detector, height, width, batch_sizes, iters, warmup, threads):
    """:func:`inference_latency` once the threads are set."""
    graph = DeployableDetector(detector)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        sizes = torch.tensor([[height, width]])
        export_onnx(detector, torch.zeros(1, 3, height, width), sizes, path)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        for batch in batch_sizes:
            images = torch.randn(
                batch, 3, height, width, generator=torch.Generator().manual_seed(0)
            )
            orig = sizes.expand(batch, -1).contiguous()
            feeds = {"images": images.numpy(), "orig_sizes": orig.numpy()}
            with torch.no_grad():
                eager = _median_seconds(functools.partial(graph, images, orig), iters, warmup)
            onnx = _median_seconds(functools.partial(session.run, None, feeds), iters, warmup)
            rows.append(
                {
                    "batch": batch,
                    "eager_ms": 1e3 * eager / batch,
                    "onnxruntime_ms": 1e3 * onnx / batch,
                }
            )
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="overrides key=value, after flags")
    return parser


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    """Run the benchmark and print its table (see the module docstring)."""
    args = build_parser().parse_args(argv)
    cfg = load_config(args)
    torch.manual_seed(0)
    rows = inference_latency(
        instantiate(cfg.model),
        args.height,
        args.width,
        args.batch_sizes,
        iters=args.iters,
        warmup=args.warmup,
        threads=args.threads,
    )
    print(f"{args.config_file} at {args.height} x {args.width}, ms per image (median):")
    print("| batch | eager PyTorch | onnxruntime |\n| --- | --- | --- |")
    for row in rows:
        print(f"| {row['batch']} | {row['eager_ms']:.1f} | {row['onnxruntime_ms']:.1f} |")
    return rows


if __name__ == "__main__":
    main()
