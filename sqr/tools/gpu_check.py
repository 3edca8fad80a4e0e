"""Check sqr on a GPU in one command and write what it finds as a markdown report.

    python tools/gpu_check.py --output report.md                      # one CUDA GPU, < 8 min
    python tools/gpu_check.py --device cpu --tiny --output dry.md     # CPU dry run, seconds

Four sections, in this order, each with its share of ``--budget-s`` (what a section leaves
unused goes to the next; an item that would start past its section's limit is skipped, and the
report lists it):

* ``msda``: multi-scale deformable attention, the Triton fast path against the pure path
  (``F.grid_sample``) at COCO sizes: ``--batch-size`` images of ``--height`` x ``--width``, 4
  levels of strides 8 to 64, 8 heads of 32 channels, 4 points; 300 and 900 queries, and every
  pixel of the levels as in the encoder. Forward + backward time, peak memory, largest
  differences of the output and the three gradients.
* ``equivalence``: per detector, on the device in float32 (TF32 off) without dropout: SQR's eval
  outputs equal the plain detector's with the same weights; in training, the last group of each
  SQR stage (the plain chain) equals the plain decoder's stage; checkpointing the
  recollected groups changes neither losses nor gradients.
* ``train_step``: per detector, baseline and SQR, one training step (forward, backward, AdamW)
  in fp32, TF32 and bf16 autocast, after one untimed warm-up step, with the synchronisations that
  ``torch.cuda.set_sync_debug_mode("warn")`` reports counted per step, by call site.
* ``benchmark``: ``tools/benchmark.py --compare-sqr`` per detector in a child process, killed
  with its own children at the section's limit.

The detectors are DAB-DETR, Deformable-DETR (plain and two-stage), AdaMixer and, where its config
exists, DINO; each from its SQR config, the baseline being that with
``model.recollection.mode=none``. ``--tiny`` shrinks models (as the tests do) and sizes, and
``--device cpu --tiny`` is the dry run CI runs: off CUDA the Triton path, TF32, bf16 and the sync
counts are skipped, and the benchmark runs for the first detector only.

Exit status: 0 when every check that ran passed, 1 when one failed or raised, 2 on bad input.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from sqr.engine import resolve_config_file
from sqr.layers import ms_deform_attn
from sqr.tools import _device_checks as checks
from sqr.tools import benchmark

#: Section -> share of --budget-s. The benchmark's three child processes per detector (each
#: starting CUDA and building an R50 model) cost most.
SECTIONS = {"msda": 0.08, "equivalence": 0.17, "train_step": 0.2, "benchmark": 0.55}
PRECISIONS = ("fp32", "tf32", "bf16")
# float32 sums in another order (kernels, GEMM shapes, atomics, recomputation) move results by
# rounding only; these bound it at the scale of the reference (checks.relative_difference).
MSDA_TOLERANCE = 1e-4
CHAIN_TOLERANCE = 1e-4
CKPT_LOSS_TOLERANCE, CKPT_GRAD_TOLERANCE = 1e-5, 1e-4


@dataclass
class Report:
    """The markdown so far, and what was skipped or failed on the way."""

    lines: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.add("| " + " | ".join(header) + " |", "|" + "---|" * len(header))
        self.add(*("| " + " | ".join(str(c) for c in row) + " |" for row in rows), "")

    def check(self, what: str, value: float, tolerance: float) -> str:
        """Record whether ``value <= tolerance``; returns the table cell."""
        if not value <= tolerance:
            self.failures.append(f"{what}: {value:.1e} > {tolerance:.0e}")
            return f"{value:.1e} **FAIL**"
        return f"{value:.1e} PASS"

    def error(self, what: str, exc: BaseException) -> str:
        """Record an item that raised (traceback to stderr); returns the table cell."""
        self.failures.append(f"{what}: {type(exc).__name__}: {exc}")
        print(f"gpu_check: {what} raised\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        return f"**error** {type(exc).__name__}: {str(exc)[:120]}"

    def text(self, summary: Sequence[Sequence[object]], at: int) -> str:
        """The report with the summary table at line ``at`` and the lists at the end."""
        table = Report()
        table.add("## Summary", "")
        table.table(["section", "status", "time (s)", "limit (s)"], summary)
        tail = ["## Skipped", ""] + [f"- {s}" for s in self.skipped or ["nothing"]]
        tail += ["", "## Failures", ""] + [f"- {f}" for f in self.failures or ["none"]]
        return "\n".join([*self.lines[:at], *table.lines, *self.lines[at:], *tail, ""])


@dataclass
class Context:
    """What every section gets: the arguments, the report, the detectors (with their resolved
    SQR config paths) and the section's deadline (``time.monotonic()`` value)."""

    args: argparse.Namespace
    report: Report
    detectors: list[tuple[checks.Detector, str]]
    deadline: float = math.inf

    def out_of_time(self, what: str) -> bool:
        """True, recording ``what`` as skipped, once the section's time is up."""
        if time.monotonic() < self.deadline:
            return False
        self.report.skipped.append(f"{what} (section time limit)")
        return True

    def overrides(self, detector: checks.Detector, *extra: str) -> list[str]:
        return [*(checks.TINY[detector.family] if self.args.tiny else []), *extra]

    def batch(self, model: torch.nn.Module) -> list[dict]:
        args = self.args
        size = (args.batch_size, args.height, args.width)
        return checks.make_batch(size, int(getattr(model, "num_classes", 1)), args.device)


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes (dry run)")
    parser.add_argument("--output", default="gpu_check.md", metavar="PATH", help="the report")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="all sections together (7 min: with start-up"
        " and the last item of a section running past its limit, under 8 min on one H100)",
    )
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    parser.add_argument("--batch-size", type=int, default=None, help="4 (--tiny: 2)")
    parser.add_argument("--height", type=int, default=None, help="800 (--tiny: 64)")
    parser.add_argument("--width", type=int, default=None, help="1216 (--tiny: 80)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads, here and in the benchmark"
        " (--tiny: 1, as tiny models are overhead-bound and one thread waits on no busy core)",
    )
    return parser


def validate(args: argparse.Namespace) -> list[str]:
    """Fill in the size defaults and check the arguments; returns the sections to run.

    Raises:
        ValueError: naming the bad value.
    """
    defaults = (2, 64, 80, 1) if args.tiny else (4, 800, 1216, None)
    for name, default in zip(("batch_size", "height", "width", "threads"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    # Images of at least 64 px: one pixel on the stride-64 level.
    for flag, value, low in (
        ("--batch-size", args.batch_size, 1),
        ("--height", args.height, 64),
        ("--width", args.width, 64),
    ):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if not args.budget_s > 0:
        raise ValueError(f"--budget-s must be positive, got {args.budget_s}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda: torch.cuda.is_available() is False (dry run: --device cpu)"
        )
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if not sections or any(s not in SECTIONS for s in sections):
        raise ValueError(f"--sections {args.sections!r}: choose from {list(SECTIONS)}")
    return sections


def available_detectors(report: Report) -> list[tuple[checks.Detector, str]]:
    """(detector, resolved SQR config path) of each detector whose config exists."""
    found = []
    for detector in checks.DETECTORS:
        try:
            found.append((detector, resolve_config_file(detector.config)))
        except FileNotFoundError:
            if not detector.optional:
                raise
            report.skipped.append(f"{detector.name}: no config {detector.config}")
    return found


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def section_msda(ctx: Context) -> None:
    args, report = ctx.args, ctx.report
    shapes = checks.level_shapes(args.height, args.width)
    heads, dim, points = (2, 4, 2) if args.tiny else (8, 32, 4)
    pixels = sum(h * w for h, w in shapes)
    iters = 1 if args.tiny else 3
    paths = {"pure": functools.partial(ms_deform_attn.ms_deform_attn_sample, backend="pytorch")}
    fast, why = None, "not on CUDA"
    if args.device == "cuda":
        value, _, locations, _, _ = checks.msda_inputs(1, heads, dim, 1, points, shapes, "cuda")
        why = ms_deform_attn.why_not_triton(value, locations)
        if why is None:
            fast = functools.partial(ms_deform_attn.ms_deform_attn_sample, backend="triton")
    if fast is not None:
        paths["triton"] = fast
    else:
        report.skipped.append(f"msda: the Triton fast path ({why}); the pure path alone is timed")
    report.add(
        f"{args.batch_size} images, levels {shapes} (strides 8-64), {heads} heads x {dim} "
        f"channels, {points} points; median of {iters} forward + backward passes; differences "
        "relative to max(1, max |pure|). On this device `ms_deform_attn_sample` runs the "
        f"**{'triton' if fast is not None else 'pure'}** path.",
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
            results = {
                name: checks.msda_forward_backward(sample, inputs, args.device, iters)
                for name, sample in paths.items()
            }
            for name, (times, peak, tensors) in results.items():
                diffs = ["-"] * 4
                if name != "pure":
                    pure = results["pure"][2]
                    what = ("output", "value grad", "location grad", "weight grad")
                    diffs = [
                        report.check(
                            f"msda {name} vs pure, {label} queries, {w}",
                            checks.relative_difference(a, b),
                            MSDA_TOLERANCE,
                        )
                        for w, a, b in zip(what, tensors, pure, strict=True)
                    ]
                memory = f"{peak:.0f}" if peak is not None else "-"
                ms = f"{statistics.median(times) * 1e3:.1f}"
                rows.append([label, name, ms, memory, *diffs])
        except Exception as e:  # reported; the next size still runs
            rows.append([label, "-", report.error(f"msda, {label} queries", e), *["-"] * 5])
        free_memory(args.device)
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
                plain = checks.build_model(path, [*overrides, checks.BASELINE], args.device)
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
        free_memory(args.device)
    header = ["detector", "eval SQR == plain", "SQR chain == plain stages (train)"]
    report.table(header + ["ckpt on == off: losses", "ckpt on == off: gradients"], rows)


def section_train_step(ctx: Context) -> None:
    args, report = ctx.args, ctx.report
    cuda = args.device == "cuda"
    if not cuda:
        report.skipped.append("train_step: TF32, bf16 and sync counting (not on CUDA)")
    report.add(
        f"{args.batch_size} images of {args.height}x{args.width}, AdamW; "
        + ("one untimed fp32 step per model first. " if cuda else "no warm-up (not on CUDA). ")
        + "Syncs: warnings of `torch.cuda.set_sync_debug_mode('warn')` in the timed step.",
        "",
    )
    rows = []
    for detector, path in ctx.detectors:
        for variant in ("baseline", "sqr"):
            label = f"{detector.name} {variant}"
            if ctx.out_of_time(f"train_step: {label}"):
                continue
            try:
                extra = [checks.BASELINE] if variant == "baseline" else []
                model = checks.build_model(path, ctx.overrides(detector, *extra), args.device)
                params = [p for p in model.parameters() if p.requires_grad]
                optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
                batch = ctx.batch(model.train())
                if cuda:
                    checks.training_step(model, optimizer, batch, "fp32", args.device)
                for precision in PRECISIONS if cuda else ("fp32",):
                    if ctx.out_of_time(f"train_step: {label} {precision}"):
                        continue
                    seconds, peak, loss, sites = checks.training_step(
                        model, optimizer, batch, precision, args.device
                    )
                    if not math.isfinite(loss):
                        report.failures.append(f"{label} {precision}: loss {loss}")
                    top = ", ".join(f"`{s}` x{n}" for s, n in sites.most_common(3)) or "-"
                    groups = model.active_schedule.num_groups
                    row = [detector.name, variant, groups, precision, f"{seconds:.3f}"]
                    row += [f"{peak:.0f}" if peak is not None else "-", f"{loss:.3f}"]
                    rows.append([*row, sum(sites.values()) if cuda else "-", top])
                del model, optimizer, params, batch
            except Exception as e:  # reported; the next model still runs
                rows.append([detector.name, variant, "-", "-", report.error(label, e), *"----"])
            free_memory(args.device)
    header = ["detector", "variant", "groups", "precision", "step (s)", "peak mem (MB)", "loss"]
    report.table(header + ["syncs", "top sync sites"], rows)


def section_benchmark(ctx: Context) -> None:
    args, report = ctx.args, ctx.report
    iters, warmup = (1, 0) if args.tiny else (2, 1)
    flags = ["--compare-sqr", "--device", args.device, "--batch-size", str(args.batch_size)]
    flags += ["--height", str(args.height), "--width", str(args.width)]
    flags += ["--iters", str(iters), "--warmup", str(warmup)]
    flags += ["--threads", str(args.threads)] if args.threads is not None else []
    report.add(f"`tools/benchmark.py {' '.join(flags)}`, a child process per detector.", "")
    free_memory(args.device)  # the children need the GPU memory this process cached
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
                report.add(benchmark.format_table(data["variants"], data["ratios"]), "")
                if data["step_bound"] is not None:
                    report.add(
                        f"SQR step-time bound (one decoder pass per extra group): "
                        f"{data['step_bound']:.2f}x",
                        "",
                    )


SECTION_RUNNERS = {
    "msda": ("Deformable attention: Triton fast path vs pure path", section_msda),
    "equivalence": ("SQR equivalence", section_equivalence),
    "train_step": ("One training step per precision", section_train_step),
    "benchmark": ("tools/benchmark.py --compare-sqr", section_benchmark),
}


def environment() -> list[str]:
    """Versions and devices, as report lines."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return [
        f"- torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton_version}, "
        f"Python {platform.python_version()}",
        f"- GPU: {gpu}; {os.cpu_count()} CPUs",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sections and write the report (rewritten after each section, so an interrupted
    run leaves what it had measured).

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        0 when every check passed, 1 when one failed or raised, 2 on bad input.
    """
    args = build_parser().parse_args(argv)
    try:
        sections = validate(args)
    except ValueError as e:
        print(f"gpu_check: error: {e}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = " ".join(["gpu_check", *(sys.argv[1:] if argv is None else argv)])
    report = Report()
    report.add("# sqr GPU check", "", f"`{command}`", "", *environment(), "")
    summary_at = len(report.lines)
    ctx = Context(args, report, available_detectors(report))
    summary, carry = [], 0.0
    for index, name in enumerate(sections, 1):
        title, run = SECTION_RUNNERS[name]
        limit = SECTIONS[name] * args.budget_s + carry
        print(f"gpu_check: {name} (limit {limit:.0f} s) ...", file=sys.stderr, flush=True)
        report.add(f"## {index}. {title}", "")
        start, failures = time.monotonic(), len(report.failures)
        ctx.deadline = start + limit
        try:
            run(ctx)
        except Exception as e:  # reported; the other sections still run
            report.add(report.error(f"section {name}", e), "")
        used = time.monotonic() - start
        carry = max(0.0, limit - used)
        status = "PASS" if len(report.failures) == failures else "**FAIL**"
        summary.append([name, status, f"{used:.0f}", f"{limit:.0f}"])
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(report.text(summary, summary_at))
    print(f"gpu_check: wrote {args.output}", file=sys.stderr)
    return 1 if report.failures else 0


def invoke_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    invoke_main()
