"""The measurements and checks that ``sqr-gpu-check`` (:mod:`sqr.tools.gpu_check`) runs.

Each function returns numbers; the command sets the tolerances, the time limits and the report.
Everything runs on CPU too (the command's dry run), and nothing here requires a GPU.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from sqr.config import LazyConfig, instantiate
from sqr.tools._workload import synthetic_batch

MB = 1024.0**2
SYNC_WARNING = "synchronizing CUDA operation"  # what set_sync_debug_mode("warn") warns with


def free_memory(device: str) -> None:
    """Drop what the last item left: Python garbage, and on CUDA the cached blocks."""
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def build_model(path: str, overrides: Sequence[str], device: str) -> nn.Module:
    """The config's model with ``overrides``, initialised from seed 0, on ``device``."""
    cfg = LazyConfig.apply_overrides(LazyConfig.load(path), list(overrides))
    torch.manual_seed(0)
    return instantiate(cfg.model).to(device)


def make_batch(size: tuple[int, int, int], num_classes: int, device: str) -> list[dict]:
    """tools/benchmark.py's seeded synthetic batch of (images, height, width), on ``device``."""
    batch = synthetic_batch(*size, num_classes, seed=0)
    for x in batch:
        x["image"] = x["image"].to(device)
        x["targets"] = {k: v.to(device) for k, v in x["targets"].items()}
    return batch


def synchronize(device: str) -> None:
    """Wait for the device's queued kernels (CUDA runs them asynchronously)."""
    if device == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 matmuls and convolutions on or off inside the block (restored after)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def counting_syncs(enabled: bool) -> Iterator[list[warnings.WarningMessage]]:
    """The warnings of ``torch.cuda.set_sync_debug_mode("warn")`` inside the block, as a list
    filled when the block ends (empty when not enabled: off CUDA)."""
    if not enabled:
        yield []
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every synchronisation, not the first per call site
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield caught
        finally:
            torch.cuda.set_sync_debug_mode(0)


def sync_sites(caught: Sequence[warnings.WarningMessage]) -> Counter:
    """How many synchronisations each Python line (file:line) among ``caught`` ran."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return Counter(
        f"{os.path.relpath(w.filename, root)}:{w.lineno}"
        for w in caught
        if SYNC_WARNING in str(w.message)
    )


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over max(1, max |b|): differences at the scale of the reference ``b``."""
    if a.shape != b.shape:
        return math.inf
    if not a.numel():
        return 0.0
    return (a.double() - b.double()).abs().max().item() / max(1.0, b.abs().max().item())


# ---------------------------------------------------------------------------- deformable attention


def level_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """Feature sizes at strides 8, 16, 32, 64; each stride-2 stage rounds up, as ResNet's and
    the extra level's convolutions do (800x1216: 100x152, 50x76, 25x38, 13x19)."""
    shapes = [(math.ceil(height / 8), math.ceil(width / 8))]
    while len(shapes) < 4:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def msda_inputs(
    batch: int,
    heads: int,
    dim: int,
    queries: int,
    points: int,
    shapes: Sequence[tuple[int, int]],
    device: str,
) -> tuple[torch.Tensor, list[tuple[int, int]], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded value [B, S, M, D], the level shapes, locations [B, N, M, L, P, 2] (10% beyond each
    border, so some samples read the zero padding), softmax weights [B, N, M, L, P] and an output
    gradient [B, N, M*D]."""
    gen = torch.Generator().manual_seed(0)
    levels = len(shapes)
    value = torch.randn(batch, sum(h * w for h, w in shapes), heads, dim, generator=gen)
    locations = torch.rand(batch, queries, heads, levels, points, 2, generator=gen) * 1.2 - 0.1
    logits = torch.randn(batch, queries, heads, levels * points, generator=gen)
    weights = logits.softmax(-1).view(batch, queries, heads, levels, points)
    grad_out = torch.randn(batch, queries, heads * dim, generator=gen)
    tensors = (locations, weights, grad_out)
    return value.to(device), list(shapes), *(t.to(device) for t in tensors)


def msda_forward_backward(
    sample: Callable[..., torch.Tensor], inputs: tuple, device: str, iters: int
) -> tuple[list[float], float | None, tuple[torch.Tensor, ...]]:
    """``iters`` timed forward + backward passes of ``sample`` after an untimed one (where Triton
    compiles).

    Returns:
        The seconds of each timed pass; the peak memory above what was held before a pass (MB,
        CUDA only); the last pass's output and the gradients of the value, the locations and
        the weights.
    """
    value, shapes, locations, weights, grad_out = inputs
    leaves = [t.detach().requires_grad_() for t in (value, locations, weights)]
    times, peak = [], None
    for i in range(iters + 1):
        for leaf in leaves:
            leaf.grad = None
        synchronize(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            held = torch.cuda.memory_allocated()
        start = time.perf_counter()
        out = sample(leaves[0], shapes, *leaves[1:])
        out.backward(grad_out)
        synchronize(device)
        if i:
            times.append(time.perf_counter() - start)
        if device == "cuda":
            peak = (torch.cuda.max_memory_allocated() - held) / MB
    grads = [leaf.grad for leaf in leaves]
    return times, peak, (out.detach(), *grads)


# ---------------------------------------------------------------------------- equivalence


def _output_difference(a: dict, b: dict) -> float:
    """Largest difference between two eval outputs of one image (inf when shapes differ)."""
    diffs = [0.0]
    for key in ("boxes", "scores", "labels"):
        if a[key].shape != b[key].shape:
            return math.inf
        if a[key].numel():
            diffs.append((a[key].double() - b[key].double()).abs().max().item())
    return max(diffs)


def _losses_and_grads(model: nn.Module, batch: list[dict]) -> tuple[dict, dict]:
    torch.manual_seed(0)  # the same denoising queries (DINO) in every run
    losses = model.train()(batch)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in losses.items()}, grads


def sqr_equivalence(sqr: nn.Module, plain: nn.Module, batch: list[dict]) -> dict[str, float]:
    """How far SQR is from what it must equal, for one detector without dropout.

    Args:
        sqr: the SQR detector; its decoder's ``checkpoint_recollected`` is switched on and back.
        plain: the same detector with the plain schedule; it gets ``sqr``'s weights.
        batch: training inputs (images with targets).

    Returns:
        ``eval``: largest difference of the eval outputs (SQR evaluates the plain decoder);
        ``chain``: of the training predictions of the last group of every SQR stage (the baseline
        chain) and the plain decoder's stages, relative (:func:`relative_difference`);
        ``losses``, ``grads``: of the losses and gradients with and without checkpointing the
        recollected groups, relative (inf where a loss or gradient appears or vanishes).
    """
    plain.load_state_dict(sqr.state_dict())
    with torch.no_grad():
        out_sqr, out_plain = sqr.eval()(batch), plain.eval()(batch)
        logits, boxes, schedule = sqr.train().predict(batch)
        plain_logits, plain_boxes, _ = plain.train().predict(batch)
    chain = [schedule.output_slice(s).stop - 1 for s in range(schedule.num_stages)]
    result = {
        "eval": max(_output_difference(a, b) for a, b in zip(out_sqr, out_plain, strict=True)),
        "chain": max(
            relative_difference(logits[chain], plain_logits),
            relative_difference(boxes[chain], plain_boxes),
        ),
    }
    losses, grads = _losses_and_grads(sqr, batch)
    sqr.decoder.checkpoint_recollected = True
    try:
        losses_ckpt, grads_ckpt = _losses_and_grads(sqr, batch)
    finally:
        sqr.decoder.checkpoint_recollected = False
    if losses.keys() != losses_ckpt.keys() or grads.keys() != grads_ckpt.keys():
        result["losses"] = result["grads"] = math.inf
    else:
        result["losses"] = max(relative_difference(losses_ckpt[k], losses[k]) for k in losses)
        result["grads"] = max(relative_difference(grads_ckpt[k], grads[k]) for k in grads)
    return result


# ---------------------------------------------------------------------------- inference latency


def latency_rows(
    model: nn.Module,
    size: int,
    batch_sizes: Sequence[int],
    precisions: Sequence[str],
    device: str,
    iters: int,
    warmup: int,
) -> list[list]:
    """Eager inference latency (:func:`sqr.export.benchmark.eager_latency`: backbone to top-k,
    synchronised on CUDA) of ``model`` on ``size x size`` images, per precision ("fp32", or
    "fp16": float16 autocast) and batch size.

    Returns:
        Rows [precision, batch, ms per image, images per second].
    """
    from sqr.export.benchmark import eager_latency

    rows = []
    for precision in precisions:
        figures = eager_latency(
            model, size, size, batch_sizes, iters=iters, warmup=warmup, device=device,
            fp16=precision == "fp16",
        )  # fmt: skip
        rows += [[precision, b, ms, 1e3 / ms] for b, ms in zip(batch_sizes, figures, strict=True)]
    return rows


# ---------------------------------------------------------------------------- child processes


def run_killable(argv: Sequence[str], timeout: float) -> tuple[int | None, str]:
    """Run ``argv`` in a process group of its own, and kill the group (the child and any process
    it started) at ``timeout`` seconds.

    Returns:
        The exit status (None when killed) and the last 15 lines of its output.
    """
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        log.seek(0)
        return code, "\n".join(log.read().strip().splitlines()[-15:])
