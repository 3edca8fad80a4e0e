"""Running a model over a dataset and feeding its outputs to an evaluator."""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
from collections.abc import Iterable, Iterator

import torch
from tqdm import tqdm

from sqr.evaluation.coco_evaluation import COCOEvaluator
from sqr.utils import comm

logger = logging.getLogger(__name__)

__all__ = ["inference_on_dataset"]

# Iterations excluded from the per-image timing: the first batches pay for cudnn autotuning,
# allocator growth and worker start-up, which says nothing about steady-state speed.
_NUM_WARMUP = 5


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Temporarily put ``model`` in eval mode, restoring its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _sync_device() -> None:
    # CUDA kernels run asynchronously; synchronise so wall-clock timings are real.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def inference_on_dataset(
    model: torch.nn.Module, data_loader: Iterable[list[dict]], evaluator: COCOEvaluator
) -> dict:
    """Run ``model`` on every batch of ``data_loader`` and evaluate its outputs.

    The model is put in eval mode (its previous mode is restored on exit) and run under
    :func:`torch.no_grad`. In a distributed run each rank processes its own shard and the
    evaluator gathers the results.

    Args:
        model: Takes a list of dataset records and returns one output dict per record, in
            the format :meth:`COCOEvaluator.process` expects.
        data_loader: Yields batches (lists of records).
        evaluator: Receives ``reset()``, ``process(inputs, outputs)`` per batch and
            ``evaluate()``.

    Returns:
        What ``evaluator.evaluate()`` returns (``{}`` on ranks other than 0).
    """
    try:
        total = len(data_loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    logger.info(
        "Start inference on %s batches (%d device(s))",
        total if total is not None else "an unknown number of",
        comm.get_world_size(),
    )

    evaluator.reset()
    num_images = 0
    timed_images = 0
    timed_seconds = 0.0
    start = time.perf_counter()
    with _eval_mode(model), torch.no_grad():
        bar = tqdm(
            data_loader,
            total=total,
            desc="inference",
            unit="batch",
            disable=not comm.is_main_process(),
            dynamic_ncols=True,
        )
        iter_start = time.perf_counter()
        for idx, inputs in enumerate(bar):
            outputs = model(inputs)
            _sync_device()
            evaluator.process(inputs, outputs)
            now = time.perf_counter()
            num_images += len(inputs)
            if idx >= _NUM_WARMUP:
                timed_images += len(inputs)
                timed_seconds += now - iter_start
            # Includes data loading: the number users care about is end-to-end throughput.
            iter_start = now
        bar.close()
    total_seconds = time.perf_counter() - start

    logger.info(
        "Total inference time: %s for %d images (%.4f s / img per device, on %d device(s))",
        datetime.timedelta(seconds=int(total_seconds)),
        num_images,
        total_seconds / max(num_images, 1),
        comm.get_world_size(),
    )
    if timed_images:
        logger.info(
            "Steady-state inference time (excluding %d warm-up iterations): %.4f s / img "
            "per device",
            _NUM_WARMUP,
            timed_seconds / timed_images,
        )

    results = evaluator.evaluate()
    # evaluate() returns {} on non-main ranks; normalise None for evaluators that return it.
    return results if results is not None else {}
