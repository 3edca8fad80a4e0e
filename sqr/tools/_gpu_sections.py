"""The sections of ``sqr-gpu-check`` (:mod:`sqr.tools.gpu_check`) that check and time training
(its benchmark sections are in :mod:`sqr.tools._gpu_benchmarks`): each adds its tables to the
report, checks what it can, and stops starting items once its time is up."""

from __future__ import annotations

import functools
import math
import os
import statistics
from typing import TYPE_CHECKING

import torch

from sqr.layers import ms_deform_attn
from sqr.modeling import table
from sqr.tools import _device_checks as checks
from sqr.tools import _step_timing as timing

if TYPE_CHECKING:
    from sqr.tools.gpu_check import Context

# float32 sums in another order (kernels, GEMM shapes, atomics, recomputation) move results by
# rounding only; these bound it at the scale of the reference (checks.relative_difference).
MSDA_TOLERANCE = 1e-4
CHAIN_TOLERANCE = 1e-4
CKPT_LOSS_TOLERANCE, CKPT_GRAD_TOLERANCE = 1e-5, 1e-4
#: Families whose layers sample with deformable attention (their full step is timed per backend).
MSDA_FAMILIES = ("deformable_detr", "dino")


def section_msda(ctx: Context) -> None:
    args, report = ctx.args, ctx.report
    shapes = checks.level_shapes(args.height, args.width)
    heads, dim, points = (2, 4, 2) if args.tiny else (8, 32, 4)
    pixels = sum(h * w for h, w in shapes)
    iters = 1 if args.tiny else 3
    sample = ms_deform_attn.ms_deform_attn_sample
    paths = {"pytorch": functools.partial(sample, backend="pytorch")}
    why = "not on CUDA"
    if args.device == "cuda":
        value, _, locations, _, _ = checks.msda_inputs(1, heads, dim, 1, points, shapes, "cuda")
        why = ms_deform_attn.why_not_triton(value, locations)
        if why is None:
            paths["triton"] = functools.partial(sample, backend="triton")
            paths["triton bf16 value"] = functools.partial(sample, backend="triton")
    if "triton" not in paths:
        report.skipped.append(f"msda: the Triton path ({why}); the PyTorch path alone is timed")
    report.add(
        f"{args.batch_size} images, levels {shapes} (strides 8-64), {heads} heads x {dim} "
        f"channels, {points} points; median of {iters} forward + backward passes after one "
        "untimed one (compilation, autotuning); differences relative to max(1, max |pytorch|). "
        f"`SQR_MSDA=auto` takes **{'triton' if 'triton' in paths else 'pytorch'}** here.",
        "",
    )
    rows = []
    for count in ([10] if args.tiny else [300, 900]) + [pixels]:
        label = f"{count} (encoder)" if count == pixels else str(count)
        if ctx.out_of_time(f"msda: {label} queries"):
            continue
        try:
            sizes = (args.batch_size, heads, dim, count, points, shapes, args.device)
            inputs = checks.msda_inputs(*sizes)
            half = (inputs[0].bfloat16(), *inputs[1:])
            results = {
                name: checks.msda_forward_backward(
                    fn, half if "bf16" in name else inputs, args.device, iters
                )
                for name, fn in paths.items()
            }
            for name, (times, peak, tensors) in results.items():
                diffs = ["-"] * 4
                if name != "pytorch":
                    # A bf16 value: its rounding, not the kernels', dominates; same bound x 100.
                    tolerance = MSDA_TOLERANCE * (100 if "bf16" in name else 1)
                    what = ("output", "value grad", "location grad", "weight grad")
                    diffs = [
                        report.check(
                            f"msda {name} vs pytorch, {label} queries, {w}",
                            checks.relative_difference(a.float(), b),
                            tolerance,
                        )
                        for w, a, b in zip(what, tensors, results["pytorch"][2], strict=True)
                    ]
                rows.append([label, name, statistics.median(times) * 1e3, peak, *diffs])
        except Exception as e:  # reported; the next size still runs
            rows.append([label, "-", report.error(f"msda, {label} queries", e), *["-"] * 5])
        checks.free_memory(args.device)
    header = ["queries", "path", "fwd+bwd (ms)", "peak mem (MB)", "output"]
    report.table(header + ["value grad", "location grad", "weight grad"], rows)


def section_equivalence(ctx: Context) -> None:
    args, report = ctx.args, ctx.report
    report.add(
        f"On {args.device} in float32 (TF32 off), without dropout, {args.batch_size} images of "
        f"{args.height}x{args.width}; differences relative to max(1, max |reference|), except "
        "the eval outputs, which must be identical.",
        "",
    )
    rows = []
    for detector, path in ctx.detectors:
        if ctx.out_of_time(f"equivalence: {detector.name}"):
            continue
        name = detector.name
        try:
            with checks.tf32(False):
                overrides = ctx.overrides(detector, *detector.no_dropout)
                sqr = checks.build_model(path, overrides, args.device)
                plain = checks.build_model(path, [*overrides, table.BASELINE], args.device)
                diff = checks.sqr_equivalence(sqr, plain, ctx.batch(sqr))
            rows.append(
                [
                    name,
                    report.check(f"{name}: eval SQR == plain", diff["eval"], 0.0),
                    report.check(f"{name}: SQR chain == plain", diff["chain"], CHAIN_TOLERANCE),
                    report.check(f"{name}: ckpt losses", diff["losses"], CKPT_LOSS_TOLERANCE),
                    report.check(f"{name}: ckpt gradients", diff["grads"], CKPT_GRAD_TOLERANCE),
                ]
            )
            del sqr, plain
        except Exception as e:  # reported; the next detector still runs
            rows.append([name, report.error(f"equivalence, {name}", e), *["-"] * 3])
        checks.free_memory(args.device)
    header = ["detector", "eval SQR == plain", "SQR chain == plain stages (train)"]
    report.table(header + ["ckpt on == off: losses", "ckpt on == off: gradients"], rows)


def _step_row(ctx: Context, label: str, step: timing.Stepper, batch: list[dict]) -> list:
    """Timed steps, then the separate sync-counting pass: the table's numbers."""
    args = ctx.args
    times = timing.time_steps(step, batch, args.iters, args.warmup)
    if not math.isfinite(times.loss):
        ctx.report.failures.append(f"{label}: loss {times.loss}")
    sites = timing.count_syncs(step, batch)
    top = ", ".join(f"`{s}` x{n}" for s, n in sites.most_common(3)) or "-"
    syncs = sum(sites.values()) if args.device == "cuda" else "-"
    numbers = [times.forward_ms, times.backward_ms, times.step_ms, times.host_match_ms]
    return [*numbers, times.peak_mb, round(times.loss, 4), syncs, top]


STEP_HEADER = ["fwd (ms)", "bwd+opt (ms)", "step (ms)", "host match (ms)", "peak mem (MB)"]
STEP_HEADER += ["loss", "syncs", "top sync sites"]


#: (variant, overrides): the plain detector and its SQR config as given.
VARIANTS = (("baseline", (table.BASELINE,)), ("sqr", ()))


def section_train_step(ctx: Context) -> None:
    args, report = ctx.args, ctx.report
    cuda = args.device == "cuda"
    precisions = list(timing.PRECISIONS) if cuda else ["fp32"]
    if not cuda:
        report.skipped.append("train_step: TF32, bf16, fp16, MSDA backends, syncs (not on CUDA)")
    report.add(
        f"{args.batch_size} images of {args.height}x{args.width} with COCO-like box counts, "
        f"AdamW. Per precision {args.warmup} untimed warm-up step(s), then the median of "
        f"{args.iters} timed steps (CUDA events; sync-debug mode off). fp16 runs with a "
        "GradScaler. Host match: the matchers' scipy solves, part of fwd. Syncs: "
        "`torch.cuda.set_sync_debug_mode('warn')` warnings in one more, untimed step. Rows "
        "`msda=pytorch` rerun TF32 with the PyTorch sampling path (the others: `auto`).",
        "",
    )
    rows = []
    for detector, path in ctx.detectors:
        for variant, extra in VARIANTS:
            label = f"{detector.name} {variant}"
            if ctx.out_of_time(f"train_step: {label}"):
                continue
            try:
                model = checks.build_model(path, ctx.overrides(detector, *extra), args.device)
                batch = ctx.batch(model.train())
                groups = model.active_schedule.num_groups
                runs = [(p, "auto") for p in precisions]
                if cuda and detector.family in MSDA_FAMILIES:
                    runs.append(("tf32", "pytorch"))
                for precision, backend in runs:
                    what = f"{label} {precision} msda={backend}"
                    if ctx.out_of_time(f"train_step: {what}"):
                        continue
                    ms_deform_attn.set_backend(model, backend)
                    step = timing.Stepper(model, precision, args.device)
                    name = precision + ("" if backend == "auto" else f" msda={backend}")
                    try:
                        numbers = _step_row(ctx, what, step, batch)
                    except Exception as e:  # reported; the next precision still runs
                        numbers = [report.error(what, e), *["-"] * 7]
                    rows.append([detector.name, variant, groups, name, *numbers])
                    del step
                del model, batch
            except Exception as e:  # reported; the next model still runs
                rows.append([detector.name, variant, "-", "-", report.error(label, e), *"-" * 7])
            checks.free_memory(args.device)
    report.table(["detector", "variant", "groups", "precision", *STEP_HEADER], rows)


def section_large(ctx: Context) -> None:
    args, report = ctx.args, ctx.report
    batch_size, height, width = args.large_batch, args.large_height, args.large_width
    precision = "bf16" if args.device == "cuda" else "fp32"
    report.add(
        f"Batch {batch_size} of {height}x{width} (COCO's largest training images: short side "
        f"800, long side 1333), {precision}; does it fit, how fast, how much memory.",
        "",
    )
    rows = []
    for detector, path in ctx.detectors:
        if detector.family not in MSDA_FAMILIES or "two-stage" in detector.name:
            continue
        for variant, extra in VARIANTS:
            label = f"large: {detector.name} {variant}"
            if ctx.out_of_time(label):
                continue
            try:
                model = checks.build_model(path, ctx.overrides(detector, *extra), args.device)
                num_classes = int(getattr(model, "num_classes", 1))
                batch = checks.make_batch((batch_size, height, width), num_classes, args.device)
                step = timing.Stepper(model.train(), precision, args.device)
                times = timing.time_steps(step, batch, args.iters, args.warmup)
                rows.append([detector.name, variant, times.forward_ms, times.backward_ms])
                rows[-1] += [times.step_ms, times.host_match_ms, times.peak_mb]
                del model, batch, step
            except torch.OutOfMemoryError as e:
                rows.append([detector.name, variant, report.error(label, e), *["-"] * 4])
            except Exception as e:  # reported; the next model still runs
                rows.append([detector.name, variant, report.error(label, e), *["-"] * 4])
            checks.free_memory(args.device)
    report.table(["detector", "variant", *STEP_HEADER[:5]], rows)


def section_ddp(ctx: Context) -> None:
    args, report = ctx.args, ctx.report
    detector, path = ctx.detectors[0]
    report.add(
        f"{detector.name} (SQR) in TF32 as in train_step, plain and wrapped in "
        "`DistributedDataParallel` on a one-rank process group: the gradient buckets' "
        "all-reduce and DDP's hooks.",
        "",
    )
    rows = []
    for wrapped in (False, True):
        label = f"ddp: {detector.name} {'DDP' if wrapped else 'plain'}"
        if ctx.out_of_time(label):
            continue
        try:
            model = checks.build_model(path, ctx.overrides(detector), args.device).train()
            batch = ctx.batch(model)
            if wrapped:
                backend, times = timing.ddp_step_times(
                    model, batch, args.device, args.iters, args.warmup
                )
            else:
                backend = "-"
                step = timing.Stepper(model, "tf32", args.device)
                times = timing.time_steps(step, batch, args.iters, args.warmup)
            rows.append(["DDP" if wrapped else "plain", backend, times.forward_ms])
            rows[-1] += [times.backward_ms, times.step_ms, times.peak_mb]
        except Exception as e:  # reported; the other run still goes
            rows.append([label, "-", report.error(label, e), *["-"] * 3])
        checks.free_memory(args.device)
    report.table(["model", "process group", *STEP_HEADER[:3], "peak mem (MB)"], rows)


def section_compile(ctx: Context) -> None:
    args, report = ctx.args, ctx.report
    backend = args.compile_backend
    found = [(d, p) for d, p in ctx.detectors if d.family == "deformable_detr"]
    detector, path = (found or ctx.detectors)[0]
    report.add(
        f"{detector.name} (SQR) in TF32: eager, and compiled in place with "
        f"`torch.compile(backend={backend!r})` as `train.compile` does; the first compiled step "
        "includes tracing and compilation. Loss: the last timed step's (same weights at start).",
        "",
    )
    rows = []
    for compiled in (False, True):
        label = f"compile: {detector.name} {'compiled' if compiled else 'eager'}"
        if ctx.out_of_time(label):
            continue
        try:
            overrides = ctx.overrides(detector, *detector.no_dropout)
            if args.tiny:  # tracing the whole tiny model takes minutes of CPU: two stages
                overrides += ["model.encoder.num_layers=1", "model.decoder.num_stages=2"]
            model = checks.build_model(path, overrides, args.device).train()
            batch = ctx.batch(model)
            if compiled:
                first, times = timing.compiled_step_times(
                    model, batch, args.device, backend, args.iters
                )
            else:
                step = timing.Stepper(model, "tf32", args.device)
                first, times = None, timing.time_steps(step, batch, args.iters, 1)
            rows.append([backend if compiled else "eager", first, times.forward_ms])
            rows[-1] += [times.backward_ms, times.step_ms, times.peak_mb]
        except Exception as e:  # reported; the other run still goes
            rows.append([label, "-", report.error(label, e), *["-"] * 3])
        checks.free_memory(args.device)
    report.table(["mode", "first step (s)", *STEP_HEADER[:3], "peak mem (MB)"], rows)


def section_loader(ctx: Context) -> None:
    args, report = ctx.args, ctx.report
    images, height, width = (4, 96, 128) if args.tiny else (64, 480, 640)
    batches = 2 if args.tiny else 16
    workers = [0] if args.tiny else sorted({0, min(8, os.cpu_count() or 1)})
    report.add(
        f"The training loader with the recipes' mapper (`DetrDatasetMapper`, DETR's multi-scale "
        f"augmentation) on {images} synthetic {height}x{width} JPEGs with COCO-like boxes; "
        f"{batches} batches of {args.batch_size} after one untimed. Compare with "
        "images/s the step needs: batch / step time.",
        "",
    )
    rows = []
    for count in workers:
        label = f"loader: {count} workers"
        if ctx.out_of_time(label):
            continue
        try:
            rate = timing.loader_throughput(images, height, width, args.batch_size, count, batches)
            rows.append([count, rate])
        except Exception as e:  # reported; the next setting still runs
            rows.append([count, report.error(label, e)])
    report.table(["workers", "images/s"], rows)
