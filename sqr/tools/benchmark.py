"""Measure what Selective Query Recollection costs: train-step time, memory and inference time.

    python tools/benchmark.py --config-file projects/sqr/configs/sqr_dab_detr_r50_50ep.py \
        --compare-sqr --batch-size 2 --height 512 --width 640 --threads 2 --json bench.json
    python tools/benchmark.py --config-file X.py --device cuda model.num_queries=100

Each variant runs in its own child process (``python -m sqr.tools.benchmark`` with a hidden
``--_child`` flag) on a fixed-seed synthetic batch (random uint8 images with COCO-like box counts:
mean 7.4, median 4, p90 20, 1% of images 50-90, stratified over the batch; see
:mod:`sqr.tools._workload`) with AdamW over the trainable parameters. Per variant it measures:

* inference (measured first, see ``measure_variant``): eval mode under ``torch.no_grad()``, median
  batch forward divided by the batch size;
* train step: median over ``--iters`` timed steps (after ``--warmup``) of forward,
  ``sum(losses).backward()``, ``optimizer.step()`` and ``zero_grad``;
* host matching: per timed step, the wall time of the matchers' scipy solves
  (:class:`~sqr.tools._workload.HostMatchingTimer`; part of the step time), median;
* peak memory: on CUDA ``torch.cuda.max_memory_allocated``, on CPU the child's peak RSS
  (``ru_maxrss``), both read right after the steps. "Training memory" is the peak minus what was
  held after setup (model, optimizer, inputs), so it includes the lazily created AdamW state;
* decoder share d: a standalone forward + backward of the decoder (``--decoder-attr``) on inputs
  captured from a training forward, divided by the step time.

``--compare-sqr`` runs ``baseline`` (``model.recollection.mode=none``), ``sqr`` (the config as
given) and ``sqr+ckpt`` (``model.decoder.checkpoint_recollected=True``), prints their ratios to the
baseline and the bound ``1 + (G_total - S) / S * d``: one extra decoder-layer pass per extra group.

``--inference`` measures inference latency instead (:mod:`sqr.export.benchmark`): eager PyTorch
and, on CPU, the exported ONNX graph in onnxruntime, ms per image per ``--batch-sizes``, at the
recipe's evaluation size unless ``--height``/``--width`` are given:

    python tools/benchmark.py --inference --config-file rtdetrv2_r18vd_120e.py \
        --batch-sizes 1 8 --threads 2 --json latency.json

``--keep-freed-memory`` (CPU) has each child keep freed memory for reuse
(:func:`sqr.utils.env.keep_freed_memory`: glibc's ``mallopt`` with what ``MALLOC_MMAP_MAX_=0`` and
a huge ``MALLOC_TRIM_THRESHOLD_`` set). By default glibc serves every block over 32 MB with a
fresh ``mmap`` and unmaps it when freed, so each step page-faults its large activations in
again; SQR's activations are several times larger (AdaMixer's per-query mixing parameters most
of all), and that kernel time, not arithmetic, then dominates its step. Training on a CPU
(``train.device=cpu``) applies the same setting at start.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from sqr.config import LazyConfig
from sqr.utils.file_io import write_json

if TYPE_CHECKING:
    import torch

# Everything that imports torch is imported inside the functions, so that --help (parsed before
# any of them runs) answers without loading it.

MB = 1024.0**2
RATIO_KEYS = ("train_step_s", "peak_memory_mb", "train_memory_mb", "inference_s_per_img")
# Everything a child needs to measure one variant exactly as the parent was asked to.
CHILD_FLAGS = ("--config-file", "--batch-size", "--height", "--width", "--iters", "--warmup")
CHILD_FLAGS += ("--threads", "--device", "--decoder-attr", "--seed")
CHILD_SWITCHES = ("--keep-freed-memory",)
VARIANTS = {
    "baseline": ["model.recollection.mode=none"],
    "sqr": [],
    "sqr+ckpt": ["model.decoder.checkpoint_recollected=True"],
}


class BenchmarkError(Exception):
    """Bad input or a failed variant; the message is shown to the user."""


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--compare-sqr", action="store_true", help="baseline vs sqr vs sqr+ckpt")
    parser.add_argument(
        "--inference", action="store_true", help="inference latency, eager vs onnxruntime"
    )
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=None, help="--inference: 1 4 by default"
    )
    parser.add_argument(
        "--height", type=int, default=None, help="512 (--inference: the recipe's eval size)"
    )
    parser.add_argument(
        "--width", type=int, default=None, help="640 (--inference: the recipe's eval size)"
    )
    parser.add_argument("--iters", type=int, default=10, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--decoder-attr", default="decoder", help="model attribute timed for d")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="children keep freed memory for reuse, as CPU training does (see above)",
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="write all numbers here")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="overrides key=value, after flags")
    return parser


def _rss_bytes() -> int:
    """Current resident set size; falls back to the peak where /proc is missing (not Linux)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return _peak_rss_bytes()


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024  # Linux reports KiB


def _timed(fn: Callable[[], None], iters: int, warmup: int, cuda: bool) -> list[float]:
    """Seconds of each of ``iters`` calls of ``fn``, after ``warmup`` untimed ones."""
    import torch

    times = []
    for i in range(warmup + iters):
        if cuda:  # kernels are asynchronous: wait for the previous work before starting the clock
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a nest of tuples, lists and dicts."""
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _fresh_leaf(x: Any) -> Any:
    """A detached view of a floating tensor, requiring grad (so backward reaches the inputs,
    as it does inside the full step); anything else unchanged."""
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().requires_grad_(x.is_floating_point())
    return x


def measure_variant(args: argparse.Namespace) -> dict[str, Any]:
    """Build the model of ``args`` and measure it in this process (the child side)."""
    import torch

    from sqr.config import instantiate
    from sqr.tools._workload import HostMatchingTimer, synthetic_batch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    torch.manual_seed(args.seed)
    model = instantiate(cfg.model).to(args.device).train()
    decoder = getattr(model, args.decoder_attr, None)
    if not isinstance(decoder, torch.nn.Module):
        raise BenchmarkError(
            f"--decoder-attr {args.decoder_attr!r}: {type(model).__name__} has no such submodule"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
    num_classes = int(getattr(model, "num_classes", 1))
    batch = synthetic_batch(args.batch_size, args.height, args.width, num_classes, args.seed)
    for x in batch:  # inputs already on the device: the copy is not part of the step
        x["image"] = x["image"].to(args.device)
        x["targets"] = {k: v.to(args.device) for k, v in x["targets"].items()}

    if cuda:
        torch.cuda.reset_peak_memory_stats()
        setup = torch.cuda.memory_allocated()
    else:
        setup = _rss_bytes()
    # Inference first, while every variant's process is in the same state (same weights, same
    # heap): on CPU its time depends on what the allocator kept from earlier work (page faults),
    # so measured after training it would differ between variants running the same eval forward.
    model.eval()
    with torch.no_grad():
        infer_times = _timed(lambda: model(batch), args.iters, args.warmup, cuda)
    model.train()

    captured: list[tuple[tuple, dict]] = []

    def capture(module: torch.nn.Module, a: tuple, kw: dict, output: Any) -> None:
        # Detached right away so the stored inputs do not keep the step's graph alive.
        captured.append(
            (tuple(_fresh_leaf(x) for x in a), {k: _fresh_leaf(v) for k, v in kw.items()})
        )
        handle.remove()

    handle = decoder.register_forward_hook(capture, with_kwargs=True)

    match_times: list[float] = []
    match_counts: list[int] = []

    def train_step() -> None:
        losses = model(batch)
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds, solves = timer.take()
        match_times.append(seconds)
        match_counts.append(solves)

    with HostMatchingTimer() as timer:
        step_times = _timed(train_step, args.iters, args.warmup, cuda)
    match_times, match_counts = match_times[args.warmup :], match_counts[args.warmup :]
    # Read the peak now: the standalone decoder timing below must not count towards it.
    peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes()

    if not captured:
        raise BenchmarkError(f"--decoder-attr {args.decoder_attr!r}: the forward never called it")
    dec_args, dec_kwargs = captured[0]

    def decoder_step() -> None:
        out = decoder(
            *map(_fresh_leaf, dec_args), **{k: _fresh_leaf(v) for k, v in dec_kwargs.items()}
        )
        grads = [t.sum() for t in _tensors(out) if t.is_floating_point() and t.requires_grad]
        torch.stack(grads).sum().backward()

    decoder_times = _timed(decoder_step, args.iters, args.warmup, cuda)
    model.zero_grad(set_to_none=True)

    schedule = getattr(model, "recollection", None)
    step_s, decoder_s = statistics.median(step_times), statistics.median(decoder_times)
    return {
        "overrides": list(args.opts),
        "train_step_s": step_s,
        "host_match_s": statistics.median(match_times),
        "host_match_solves_per_step": statistics.median(match_counts),
        "boxes_per_image": [len(x["targets"]["labels"]) for x in batch],
        "peak_memory_mb": peak / MB,
        "setup_memory_mb": setup / MB,
        "train_memory_mb": (peak - setup) / MB,
        "memory_kind": "cuda_max_memory_allocated" if cuda else "peak_rss",
        "inference_s_per_img": statistics.median(infer_times) / args.batch_size,
        "decoder_s": decoder_s,
        "decoder_share": decoder_s / step_s,
        "recollection_mode": getattr(schedule, "mode", None),
        "num_groups": getattr(schedule, "num_groups", None),
        "num_stages": getattr(schedule, "num_stages", None),
        "threads": torch.get_num_threads(),
        "trainable_params": sum(p.numel() for p in params),
        # Every timed iteration, to judge the noise behind the medians.
        "train_step_times_s": step_times,
        "host_match_times_s": match_times,
        "decoder_times_s": decoder_times,
        "inference_batch_times_s": infer_times,
    }


def _child_argv(args: argparse.Namespace, out_path: str, overrides: Sequence[str]) -> list[str]:
    # The module whichever way the parent started (sqr-benchmark, tools/benchmark.py, -m); run
    # as a file instead, it would put sqr/tools/ first on the child's sys.path.
    argv = [sys.executable, "-m", "sqr.tools.benchmark", "--_child", out_path]
    for flag in CHILD_FLAGS:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        argv += [flag, str(value)] if value is not None else []
    argv += [flag for flag in CHILD_SWITCHES if getattr(args, flag[2:].replace("-", "_"))]
    return argv + list(overrides)


def run_child(args: argparse.Namespace, name: str, overrides: Sequence[str]) -> dict[str, Any]:
    """Measure one variant in a fresh interpreter, so that its peak RSS is its own."""
    fd, out_path = tempfile.mkstemp(prefix="sqr_bench_", suffix=".json")
    os.close(fd)
    try:
        proc = subprocess.run(
            _child_argv(args, out_path, overrides), capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise BenchmarkError(f"variant {name!r} failed (exit {proc.returncode}):\n{tail}")
        with open(out_path, encoding="utf-8") as f:
            return json.load(f)
    finally:
        os.unlink(out_path)


def validate(args: argparse.Namespace) -> dict[str, list[str]]:
    """Check the arguments and the config before any child starts; ``args.config_file``
    becomes the path that :func:`sqr.engine.resolve_config_file` finds.

    Returns:
        Variant name -> full override list (the user's, then the variant's).

    Raises:
        BenchmarkError: naming the bad value.
    """
    import torch
    from omegaconf import OmegaConf

    from sqr.engine import resolve_config_file

    _inference_flags(args)
    for flag, value, low in (
        ("--batch-size", args.batch_size, 1),
        ("--height", args.height, 32),  # the usual backbone stride: at least one feature pixel
        ("--width", args.width, 32),
        ("--iters", args.iters, 1),
        ("--warmup", args.warmup, 0),
        ("--threads", args.threads, 1),
    ):
        if value is not None and value < low:
            raise BenchmarkError(f"{flag} must be >= {low}, got {value}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError("--device cuda: torch.cuda.is_available() is False")
    misplaced = [opt for opt in args.opts if opt.startswith("--")]
    if misplaced:
        raise BenchmarkError(f"flag(s) {' '.join(misplaced)} must come before the overrides")
    try:
        # The children and the JSON get the resolved path, not a config name.
        args.config_file = resolve_config_file(args.config_file)
    except FileNotFoundError as e:
        raise BenchmarkError(str(e)) from e
    try:
        cfg = LazyConfig.load(args.config_file)
    except (FileNotFoundError, ValueError) as e:
        raise BenchmarkError(f"--config-file {args.config_file!r}: {e}") from e
    variants = {n: list(args.opts) + v for n, v in VARIANTS.items()} if args.compare_sqr else {}
    for name, overrides in (variants or {"config": list(args.opts)}).items():
        try:  # applying them to a copy catches unknown keys here, not in three children later
            LazyConfig.apply_overrides(copy.deepcopy(cfg), overrides)
        except (KeyError, ValueError) as e:
            raise BenchmarkError(f"variant {name!r}: {e.args[0]}") from e
    if not args.compare_sqr:
        return {"config": list(args.opts)}
    mode = OmegaConf.select(LazyConfig.apply_overrides(cfg, args.opts), "model.recollection.mode")
    if mode is None:
        raise BenchmarkError(f"--compare-sqr: {args.config_file} has no model.recollection.mode")
    if mode == "none":
        raise BenchmarkError(
            f"--compare-sqr needs an SQR config, but {args.config_file} has "
            "model.recollection.mode='none' (that is the baseline); use e.g. mode=selective"
        )
    return variants


def _inference_flags(args: argparse.Namespace) -> None:
    """Check the flags that differ between ``--inference`` and the training benchmark, and fill
    in the training benchmark's image size (``--inference`` reads the recipe's later)."""
    if args.inference:
        if args.compare_sqr:
            raise BenchmarkError("--inference and --compare-sqr: choose one")
        if (args.height is None) != (args.width is None):
            raise BenchmarkError("--inference: give both --height and --width, or neither")
        args.batch_sizes = args.batch_sizes or [1, 4]
        for size in args.batch_sizes:
            if size < 1:
                raise BenchmarkError(f"--batch-sizes must be >= 1, got {size}")
        return
    if args.batch_sizes is not None:
        raise BenchmarkError("--batch-sizes is for --inference (training: --batch-size)")
    args.height = 512 if args.height is None else args.height
    args.width = 640 if args.width is None else args.width


def run_inference(args: argparse.Namespace) -> int:
    """``--inference``: :func:`sqr.export.benchmark.run` with the validated arguments."""
    from sqr.export import benchmark as inference

    try:
        data = inference.run(
            args.config_file,
            args.opts,
            height=args.height,
            width=args.width,
            batch_sizes=args.batch_sizes,
            iters=args.iters,
            warmup=args.warmup,
            threads=args.threads,
            device=args.device,
        )
    except inference.EvalSizeError as e:  # no --height/--width, and none in the config
        print(f"benchmark: error: --config-file {args.config_file}: {e}", file=sys.stderr)
        return 2
    if args.json:
        write_json(args.json, data, indent=2)
        print(f"wrote {args.json}")
    return 0


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Each variant's numbers divided by the baseline's (empty without a baseline)."""
    base = results.get("baseline")
    if base is None:
        return {}
    return {
        name: {k: (r[k] / base[k] if base[k] else None) for k in RATIO_KEYS}
        for name, r in results.items()
        if name != "baseline"
    }


def step_bound(results: dict[str, dict[str, Any]]) -> float | None:
    """``1 + (G_total - S) / S * d``: SQR step time over baseline if each extra group cost one
    baseline decoder-layer pass (d: the baseline's decoder share)."""
    base, sqr = results.get("baseline"), results.get("sqr")
    if not base or not sqr or not sqr.get("num_groups") or not sqr.get("num_stages"):
        return None
    stages = sqr["num_stages"]
    return 1.0 + (sqr["num_groups"] - stages) / stages * base["decoder_share"]


def format_table(results: dict[str, dict[str, Any]], rel: dict[str, dict]) -> str:
    """A markdown table of the variants, with ratios to the baseline where there is one."""

    def cell(name: str, key: str, fmt: str) -> str:
        value = f"{results[name][key]:{fmt}}"
        ratio = rel.get(name, {}).get(key)
        return value + (f" ({ratio:.2f}x)" if ratio is not None else "")

    header = (
        "| variant | groups | step (s) | host match (ms) | peak mem (MB) | train mem (MB) "
        "| infer (s/img) | decoder share |"
    )
    lines = [header, "|" + "---|" * 8]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['num_groups']} | {cell(name, 'train_step_s', '.3f')} "
            f"| {r['host_match_s'] * 1e3:.1f} "
            f"| {cell(name, 'peak_memory_mb', '.0f')} | {cell(name, 'train_memory_mb', '.0f')} "
            f"| {cell(name, 'inference_s_per_img', '.4f')} | {r['decoder_share']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark.

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        0 on success, 2 on bad input, 1 when a variant fails (the reason goes to stderr).
    """
    args = build_parser().parse_args(argv)
    import torch

    from sqr.utils.env import keep_freed_memory

    if args._child is not None:
        kept = args.keep_freed_memory and keep_freed_memory()
        if args.keep_freed_memory and not kept:
            print("--keep-freed-memory: not applied (not glibc, or MALLOC_* set)", file=sys.stderr)
        try:
            result = {**measure_variant(args), "keeps_freed_memory": kept}
            write_json(args._child, result, indent=2)
        except BenchmarkError as e:  # a known bad input: the message alone, not a traceback
            print(e, file=sys.stderr)
            return 2
        return 0
    try:
        variants = validate(args)
    except BenchmarkError as e:
        print(f"benchmark: error: {e}", file=sys.stderr)
        return 2
    if args.inference:
        return run_inference(args)
    threads = args.threads if args.threads is not None else f"default ({torch.get_num_threads()})"
    print(
        f"config {args.config_file} | overrides {args.opts} | device {args.device} | threads "
        f"{threads} | batch {args.batch_size} x {args.height}x{args.width} | iters {args.iters} "
        f"warmup {args.warmup} | keep freed memory {args.keep_freed_memory} | torch "
        f"{torch.__version__}",
        flush=True,
    )
    results = {}
    try:
        for name, overrides in variants.items():
            print(f"running {name} in a child process ...", flush=True)
            results[name] = run_child(args, name, overrides)
    except BenchmarkError as e:
        print(f"benchmark: error: {e}", file=sys.stderr)
        return 1
    rel = ratios(results)
    bound = step_bound(results)
    memory = "CUDA max_memory_allocated" if args.device == "cuda" else "peak RSS of each child"
    boxes = next(iter(results.values()))["boxes_per_image"]
    print(f"\nboxes per image {boxes}; host match: scipy solves per step, inside the step time")
    print(f"memory: {memory}; train mem = peak - memory held after setup")
    print(format_table(results, rel))
    if bound is not None:
        sqr = results["sqr"]
        print(
            f"\nstep-time bound 1 + (G_total - S)/S * d = 1 + ({sqr['num_groups']} - "
            f"{sqr['num_stages']})/{sqr['num_stages']} * {results['baseline']['decoder_share']:.3f}"
            f" = {bound:.2f}x; measured sqr {rel['sqr']['train_step_s']:.2f}x, sqr+ckpt "
            f"{rel['sqr+ckpt']['train_step_s']:.2f}x"
        )
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("_child", "opts", "json")}
        settings.update(overrides=list(args.opts), torch_version=torch.__version__)
        settings["threads_used"] = next(iter(results.values()))["threads"]
        data = {"settings": settings, "variants": results, "ratios": rel, "step_bound": bound}
        write_json(args.json, data, indent=2)
        print(f"wrote {args.json}")
    return 0


def invoke_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    invoke_main()
