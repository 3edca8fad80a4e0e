r"""Inference latency per image of a detector's evaluation graph: eager PyTorch, and the exported
ONNX graph in onnxruntime (CPU), by default at the recipe's evaluation size.

    python tools/benchmark.py --inference --config-file rtdetrv2_r18vd_120e.py \
        --batch-sizes 1 8 --threads 2 --json latency.json

(:mod:`sqr.tools.benchmark` parses the flags and calls :func:`run`.) Both runtimes time the same
graph, :class:`~sqr.export.DeployableDetector`: a batch of normalised images of one size in, the
model's own top-k boxes in original pixels out (backbone to post-processing; no image decoding
or resizing), with the config's model at random initialisation (weights do not change the
time). Per batch size: milliseconds per image, the median over ``iters`` runs after ``warmup``
untimed ones.

* eager PyTorch always, on ``device``, under ``torch.no_grad()``; on CUDA the clock waits for
  the queued kernels (``torch.cuda.synchronize`` before and after each run), and
  :func:`eager_latency` can run under fp16 autocast;
* onnxruntime on CPU, where onnx and onnxruntime are installed (``pip install 'sqr[deploy]'``):
  the graph is exported at the measured size (:func:`~sqr.export.export_onnx`) into a temporary
  directory. Where that export fails, the rows give eager PyTorch alone and their note says why.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from sqr.config import LazyConfig, instantiate

from .exporter import export_onnx, prepare_for_export
from .module import DeployableDetector
from .runtime import import_onnxruntime

__all__ = [
    "EXPORT_FAILED",
    "EvalSizeError",
    "ExportFailedError",
    "eager_latency",
    "eval_size",
    "format_rows",
    "inference_latency",
    "onnxruntime_latency",
    "run",
]

logger = logging.getLogger(__name__)

#: How a row's note begins when the ONNX export failed (the exception follows).
EXPORT_FAILED = "onnxruntime not run: the ONNX export failed"
TEST_TRANSFORM = "dataloader.test.mapper.augmentation"


class EvalSizeError(ValueError):
    """The config's test transform gives no size to read; the message names the key."""


class ExportFailedError(RuntimeError):
    """The detector did not export to ONNX; the message names the detector, size and cause."""


def eval_size(cfg: DictConfig, size_divisibility: int = 1) -> tuple[int, int]:
    """The recipe's evaluation image size (height, width), from its test transform.

    * a square resize (``size``: RT-DETR's ``rtdetr_test_augmentation``) gives ``size x size``;
    * a shortest-edge resize bounded by ``max_size`` (``short_size``, ``max_size``: the DETRs'
      ``detr_test_augmentation``) gives ``short_size x max_size`` (800 x 1333): the largest
      image it makes, from an image exactly ``max_size / short_size`` times as wide as high
      (wider ones get a shorter short side, narrower ones a shorter long side; COCO's usual
      640 x 480 becomes 800 x 1067), so the latency bounds that of any image.

    Either is padded up to multiples of ``size_divisibility``, as the batch of one such image
    is (:func:`sqr.data.batching.batch_images`): 800 x 1344 for AdaMixer's 32.

    Raises:
        EvalSizeError: the config has no such transform, or one of another kind (named).
    """
    aug = OmegaConf.select(cfg, TEST_TRANSFORM)
    if aug is None:
        raise EvalSizeError(f"the config has no {TEST_TRANSFORM}; pass --height and --width")
    if "size" in aug:
        height = width = int(aug.size)
    elif "short_size" in aug and "max_size" in aug:
        height, width = int(aug.short_size), int(aug.max_size)
    else:
        raise EvalSizeError(
            f"{TEST_TRANSFORM} ({aug.get('_target_', 'no _target_')}) sets neither `size` (a "
            "square resize) nor `short_size` and `max_size` (a shortest-edge resize); pass "
            "--height and --width"
        )
    step = max(1, int(size_divisibility))
    return math.ceil(height / step) * step, math.ceil(width / step) * step


def _inputs(batch: int, height: int, width: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded normalised images [batch, 3, H, W] and their sizes [batch, 2] (H, W)."""
    images = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    sizes = torch.tensor([[height, width]]).expand(batch, -1).contiguous()
    return images.to(device), sizes.to(device)


def _ms_per_image(
    run: Callable[[], object], batch: int, iters: int, warmup: int, sync: Callable[[], None]
) -> float:
    """Median milliseconds of ``run`` over ``iters`` timed calls after ``warmup``, per image."""
    times = []
    for i in range(warmup + iters):
        sync()  # asynchronous devices: the clock starts once earlier work is done
        start = time.perf_counter()
        run()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times) / batch


def eager_latency(
    detector: torch.nn.Module,
    height: int,
    width: int,
    batch_sizes: Sequence[int],
    *,
    iters: int = 5,
    warmup: int = 2,
    device: str = "cpu",
    fp16: bool = False,
) -> list[float]:
    """Median ms per image of the eager graph per batch size.

    Args:
        detector: a query detector (weights do not matter); put in eval mode on ``device``.
        height, width: the (already transformed) image size.
        batch_sizes: images per run.
        device: where it runs; on CUDA each timed run is bracketed by synchronisations.
        fp16: run under ``torch.autocast(dtype=torch.float16)`` (the float32 weights stay).

    Returns:
        One figure per batch size, in order.
    """
    graph = DeployableDetector(detector.eval().to(device))
    kind = torch.device(device).type
    sync = torch.cuda.synchronize if kind == "cuda" else lambda: None
    figures = []
    for batch in batch_sizes:
        images, sizes = _inputs(batch, height, width, device)

        def forward(images: torch.Tensor = images, sizes: torch.Tensor = sizes) -> None:
            with torch.no_grad(), torch.autocast(kind, dtype=torch.float16, enabled=fp16):
                graph(images, sizes)

        figures.append(_ms_per_image(forward, batch, iters, warmup, sync))
    return figures


def onnxruntime_latency(
    detector: torch.nn.Module,
    height: int,
    width: int,
    batch_sizes: Sequence[int],
    *,
    iters: int = 5,
    warmup: int = 2,
    threads: int | None = None,
) -> list[float]:
    """Median ms per image of the ONNX graph in onnxruntime (CPU) per batch size.

    The graph is exported at ``height x width`` (batch axis dynamic) into a temporary directory;
    ``detector`` is left as :func:`~sqr.export.prepare_for_export` leaves it (eval, CPU).

    Raises:
        ImportError: onnx or onnxruntime is missing (the message says how to install them).
        ExportFailedError: the export raised; the cause is chained and named.
    """
    ort = import_onnxruntime()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        images, sizes = _inputs(1, height, width, "cpu")
        try:
            export_onnx(prepare_for_export(detector), images, sizes, path)
        except ImportError:
            raise
        except Exception as e:
            raise ExportFailedError(
                f"{type(detector).__name__} at {height} x {width}: {type(e).__name__}: {e}"
            ) from e
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        figures = []
        for batch in batch_sizes:
            images, sizes = _inputs(batch, height, width, "cpu")
            # Every image fills the tensor: its own size (a graph input where the graph takes
            # one) is the original size too.
            given = {"images": images, "orig_sizes": sizes, "image_sizes": sizes}
            feeds = {x.name: given[x.name].numpy() for x in session.get_inputs()}
            figures.append(
                _ms_per_image(lambda f=feeds: session.run(None, f), batch, iters, warmup, _no_sync)
            )
    return figures


def _no_sync() -> None:
    """onnxruntime's CPU session returns when its work is done."""


def inference_latency(
    detector: torch.nn.Module,
    height: int,
    width: int,
    batch_sizes: Sequence[int] = (1, 4),
    *,
    iters: int = 5,
    warmup: int = 2,
    threads: int | None = None,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Eager PyTorch on ``device`` and, on CPU, onnxruntime, per batch size.

    Args:
        detector: a query detector (its weights do not matter).
        height, width: the (already transformed) image size.
        batch_sizes: images per run.
        threads: intra-op threads of both runtimes (default: each one's own default).
        device: "cpu" or "cuda" (onnxruntime runs on CPU only).

    Returns:
        Per batch size {"batch", "eager_ms", "onnxruntime_ms" (None where it did not run),
        "note" (why not; "" where it ran)}.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        eager = eager_latency(
            detector, height, width, batch_sizes, iters=iters, warmup=warmup, device=device
        )
        onnx: list[float | None] = [None] * len(batch_sizes)
        note = ""
        if torch.device(device).type != "cpu":
            note = "onnxruntime not run: this benchmark runs it on CPU only"
        else:
            try:
                onnx = onnxruntime_latency(
                    detector, height, width, batch_sizes, iters=iters, warmup=warmup,
                    threads=threads,
                )  # fmt: skip
            except ImportError as e:
                note = f"onnxruntime not run: {e}"
            except ExportFailedError as e:
                logger.warning("%s: %s", EXPORT_FAILED, e, exc_info=e.__cause__)
                note = f"{EXPORT_FAILED}: {str(e).splitlines()[0]}"
    finally:
        torch.set_num_threads(previous)
    return [
        {"batch": batch, "eager_ms": e, "onnxruntime_ms": o, "note": note}
        for batch, e, o in zip(batch_sizes, eager, onnx, strict=True)
    ]


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a markdown table (ms per image; "-" where a runtime did not run)."""

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = ["| batch | eager PyTorch | onnxruntime | note |", "| --- | --- | --- | --- |"]
    for row in rows:
        lines.append(
            f"| {row['batch']} | {cell(row['eager_ms'])} | {cell(row['onnxruntime_ms'])} "
            f"| {row['note'] or '-'} |"
        )
    return "\n".join(lines)


def run(
    config_file: str,
    overrides: Sequence[str],
    *,
    height: int | None,
    width: int | None,
    batch_sizes: Sequence[int],
    iters: int,
    warmup: int,
    threads: int | None,
    device: str,
) -> dict[str, Any]:
    """Build the config's model, measure it (:func:`inference_latency`) and print the table.

    Args:
        config_file: a resolved config path.
        overrides: key=value overrides, applied to the config.
        height, width: the image size; both None for the recipe's :func:`eval_size`.

    Returns:
        {"settings": what was measured and how, "rows": the rows}, as the JSON file holds it.
    """
    load_before = _load_average()
    cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), list(overrides))
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    if height is None:
        height, width = eval_size(cfg, getattr(model, "size_divisibility", 1))
        source = f"the recipe's eval size ({TEST_TRANSFORM}, padded to size_divisibility)"
    else:
        source = "--height/--width"
    print(
        f"config {config_file} | overrides {list(overrides)} | device {device} | threads "
        f"{threads if threads is not None else f'default ({torch.get_num_threads()})'} | "
        f"{height} x {width} ({source}) | iters {iters} warmup {warmup} | torch "
        f"{torch.__version__}",
        flush=True,
    )
    rows = inference_latency(
        model, height, width, batch_sizes, iters=iters, warmup=warmup, threads=threads,
        device=device,
    )  # fmt: skip
    print(f"ms per image (median of {iters}):\n{format_rows(rows)}", flush=True)
    settings = {
        "config_file": config_file,
        "overrides": list(overrides),
        "height": height,
        "width": width,
        "size_source": source,
        "batch_sizes": list(batch_sizes),
        "iters": iters,
        "warmup": warmup,
        "threads": threads,
        "device": device,
        "torch_version": torch.__version__,
        "onnxruntime_version": _version("onnxruntime"),
        # 1, 5 and 15 minute load averages before and after: how busy the machine was.
        "load_average_before": load_before,
        "load_average_after": _load_average(),
    }
    return {"settings": settings, "rows": rows}


def _load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sqr.export.benchmark FLAGS``: ``tools/benchmark.py --inference FLAGS``."""
    from sqr.tools import benchmark

    return benchmark.main(["--inference", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
