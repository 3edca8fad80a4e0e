"""The sections of ``sqr-gpu-check`` (:mod:`sqr.tools.gpu_check`) that run the project's
benchmarks on the device: RT-DETRv2's inference latency, and ``tools/benchmark.py
--compare-sqr`` per detector."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import TYPE_CHECKING

from sqr.modeling import table
from sqr.tools import _device_checks as checks
from sqr.tools import benchmark

if TYPE_CHECKING:
    from sqr.tools.gpu_check import Context


#: RT-DETRv2's evaluation size (its square test resize) and batch sizes: the real-time figures.
LATENCY_SIZE, LATENCY_BATCHES = 640, (1, 8)


def section_latency(ctx: Context) -> None:
    args, report = ctx.args, ctx.report
    found = [(d, p) for d, p in ctx.detectors if d.family == "rtdetrv2"]
    if not found:
        report.skipped.append("latency: the table has no RT-DETRv2 entry")
        return
    detector, path = found[0]
    cuda = args.device == "cuda"
    size, batches = (64, (1, 2)) if args.tiny else (LATENCY_SIZE, LATENCY_BATCHES)
    iters, warmup = (1, 0) if args.tiny else (20, 5)
    precisions = ["fp32", "fp16"] if cuda else ["fp32"]
    if not cuda:
        report.skipped.append("latency: fp16 autocast (not on CUDA)")
    report.add(
        f"{detector.name} (its baseline: SQR evaluates the same graph), eager PyTorch in eval "
        f"mode under `torch.no_grad()`, {size}x{size} normalised images already on the device, "
        "backbone to top-k boxes (`DeployableDetector`, as exported); median of "
        f"{iters} runs after {warmup}, on CUDA each between two `torch.cuda.synchronize()`. "
        "fp16: `torch.autocast(dtype=float16)` over float32 weights. Random weights.",
        "",
    )
    rows, name = [], detector.name
    if not ctx.out_of_time(f"latency: {name}"):
        try:
            model = checks.build_model(path, ctx.overrides(detector, table.BASELINE), args.device)
            timed = checks.latency_rows(
                model, size, batches, precisions, args.device, iters, warmup
            )
            rows = [[name, *row] for row in timed]
            del model
        except Exception as e:  # reported; the next section still runs
            rows.append([name, "-", "-", report.error(f"latency, {name}", e), "-"])
        checks.free_memory(args.device)
    report.table(["detector", "precision", "batch", "ms per image", "images/s"], rows)


def section_benchmark(ctx: Context) -> None:
    args, report = ctx.args, ctx.report
    iters, warmup = (1, 0) if args.tiny else (2, 1)
    flags = ["--compare-sqr", "--device", args.device, "--batch-size", str(args.batch_size)]
    flags += ["--height", str(args.height), "--width", str(args.width)]
    flags += ["--iters", str(iters), "--warmup", str(warmup)]
    flags += ["--threads", str(args.threads)] if args.threads is not None else []
    report.add(f"`tools/benchmark.py {' '.join(flags)}`, a child process per detector.", "")
    checks.free_memory(args.device)  # the children need the GPU memory this process cached
    for i, (detector, path) in enumerate(ctx.detectors):
        if args.tiny and i:
            report.skipped.append(f"benchmark: {detector.name} (dry run: one detector suffices)")
            continue
        if ctx.out_of_time(f"benchmark: {detector.name}"):
            continue
        report.add(f"**{detector.name}**", "")
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "bench.json")
            argv = [sys.executable, "-m", "sqr.tools.benchmark", "--config-file", path, *flags]
            argv += ["--json", out, *ctx.overrides(detector)]
            code, tail = checks.run_killable(argv, ctx.deadline - time.monotonic())
            if code is None:
                report.skipped.append(f"benchmark: {detector.name} (killed at the time limit)")
                report.add("Killed at the section's time limit.", "")
            elif code:
                report.failures.append(f"benchmark, {detector.name}: exit status {code}")
                report.add(f"**Failed** (exit status {code}):", "", "```", tail, "```", "")
            else:
                with open(out, encoding="utf-8") as f:
                    data = json.load(f)
                report.data.setdefault("benchmark", []).append({"detector": detector.name, **data})
                report.add(benchmark.format_table(data["variants"], data["ratios"]), "")
                if data["step_bound"] is not None:
                    report.add(
                        f"SQR step-time bound (one decoder pass per extra group): "
                        f"{data['step_bound']:.2f}x",
                        "",
                    )
