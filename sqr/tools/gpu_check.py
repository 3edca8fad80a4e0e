"""Check sqr on a GPU in one command: what a user needs to know before training, as a markdown
report and the same numbers as JSON.

    python tools/gpu_check.py --output report.md                      # one CUDA GPU, < 8 min
    python tools/gpu_check.py --device cpu --tiny --output dry.md     # CPU dry run, seconds

Sections, in this order, each with its share of ``--budget-s``:

* ``msda``: multi-scale deformable attention alone, the Triton path (float32 and bfloat16
  value) against the PyTorch path (``F.grid_sample``) at COCO sizes: 300 and 900 queries and
  every pixel of the levels (the encoder). Forward + backward time, peak memory, differences of
  the output and the three gradients.
* ``equivalence``: per detector, in float32 without dropout: SQR's eval outputs equal the plain
  detector's; in training, the last group of each SQR stage equals the plain decoder's stage;
  checkpointing the recollected groups changes neither losses nor gradients.
* ``train_step``: per detector, baseline and SQR, per precision (fp32, TF32, bf16 autocast,
  fp16 autocast with a GradScaler): warm-up steps, then forward and backward(+optimizer) times
  from CUDA events with the sync-debug mode off, the host matching time (the matchers' scipy
  solves), peak memory; the synchronisations of one more step counted in a separate pass with
  ``torch.cuda.set_sync_debug_mode("warn")``. Detectors with deformable attention also run a
  TF32 step on the PyTorch sampling path (the Triton path in a full step, against it).
* ``large``: batch ``--large-batch`` at ``--large-height`` x ``--large-width`` (8 at 800x1333,
  COCO's largest training images) for Deformable-DETR and DINO, baseline and SQR, in bf16.
* ``ddp``: a step wrapped in ``DistributedDataParallel`` on a one-rank NCCL group, against the
  plain step.
* ``compile``: eager against ``torch.compile`` (``--compile-backend``), as ``train.compile`` does:
  the first step (tracing and compiling) and the steps after it.
* ``loader``: images per second of the training loader with the recipes' mapper and
  augmentation, on synthetic JPEGs.
* ``latency``: RT-DETRv2's eager inference latency at 640x640, batch 1 and 8, fp32 and fp16
  autocast, synchronised around each run (:func:`sqr.export.benchmark.eager_latency`).
* ``benchmark``: ``tools/benchmark.py --compare-sqr`` per detector in a child process, killed
  with its own children at the section's limit.

Time: an item that would start past its section's deadline is skipped, and the report lists it;
an item that started in time may run past it. What a section leaves unused goes to the next,
and what it overran is taken from the next (the summary lists both), so the whole run keeps to
``--budget-s`` plus at most the last item's overrun.

The detectors are those of :mod:`sqr.modeling.table`, each from its SQR config, the baseline being
that with ``model.recollection.mode=none``; the synthetic batches have COCO-like box counts
(:mod:`sqr.tools._workload`). ``--tiny`` shrinks models (as the tests do) and sizes, and
``--device cpu --tiny`` is the dry run CI runs: off CUDA the Triton path, TF32, half precision
and the sync counts are skipped (and listed), the benchmark runs for the first detector only,
and the latency section takes 64x64 images, batch 1 and 2.

Exit status: 0 when every check that ran passed, 1 when one failed or raised, 2 on bad input.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sqr.engine import resolve_config_file
from sqr.modeling import table
from sqr.tools import _device_checks as checks
from sqr.tools import _gpu_benchmarks as gpu_benchmarks
from sqr.tools import _gpu_sections as gpu_sections
from sqr.utils.file_io import write_json

#: name -> (title, runner, share of --budget-s). The benchmark's child processes (each starting
#: CUDA and building R50 models) and the per-precision steps cost most.
SECTIONS = {
    "msda": ("Deformable attention alone: Triton vs PyTorch", gpu_sections.section_msda, 0.05),
    "equivalence": ("SQR equivalence", gpu_sections.section_equivalence, 0.12),
    "train_step": ("Training steps per precision", gpu_sections.section_train_step, 0.31),
    "large": ("Large batch", gpu_sections.section_large, 0.1),
    "ddp": ("One-rank DDP step", gpu_sections.section_ddp, 0.04),
    "compile": ("torch.compile", gpu_sections.section_compile, 0.1),
    "loader": ("Loader throughput", gpu_sections.section_loader, 0.04),
    "latency": ("Inference latency (RT-DETRv2)", gpu_benchmarks.section_latency, 0.02),
    "benchmark": (
        "tools/benchmark.py --compare-sqr",
        gpu_benchmarks.section_benchmark,
        0.22,
    ),
}
SUMMARY_KEYS = ("section", "status", "time_s", "limit_s", "overrun_s")


@dataclass
class Report:
    """The markdown so far, and what was skipped or failed on the way."""

    lines: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    #: What the JSON file holds: per section its tables' rows, as {column: value}.
    data: dict[str, Any] = field(default_factory=dict)
    section: str = ""

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """A markdown table (floats to 4 significant digits, None as "-") whose raw rows also go
        to the JSON under the current section."""

        def cell(value: object) -> str:
            if value is None:
                return "-"
            return f"{value:.4g}" if isinstance(value, float) else str(value)

        self.add("| " + " | ".join(header) + " |", "|" + "---|" * len(header))
        self.add(*("| " + " | ".join(cell(c) for c in row) + " |" for row in rows), "")
        records = [dict(zip(header, row, strict=False)) for row in rows]
        self.data.setdefault(self.section, []).extend(records)

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
        table.table(["section", "status", "time (s)", "limit (s)", "overrun (s)"], summary)
        tail = ["## Skipped", ""] + [f"- {s}" for s in self.skipped or ["nothing"]]
        tail += ["", "## Failures", ""] + [f"- {f}" for f in self.failures or ["none"]]
        return "\n".join([*self.lines[:at], *table.lines, *self.lines[at:], *tail, ""])


@dataclass
class Context:
    """What every section gets: the arguments, the report, the detectors (with their resolved
    SQR config paths) and the section's deadline (``time.monotonic()`` value)."""

    args: argparse.Namespace
    report: Report
    detectors: list[tuple[table.DetectorEntry, str]]
    deadline: float = math.inf

    def out_of_time(self, what: str) -> bool:
        """True, recording ``what`` as skipped, once the section's time is up."""
        if time.monotonic() < self.deadline:
            return False
        self.report.skipped.append(f"{what} (section time limit)")
        return True

    def overrides(self, detector: table.DetectorEntry, *extra: str) -> list[str]:
        return [*(detector.tiny if self.args.tiny else []), *extra]

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
        "--json", default=None, metavar="PATH", help="the numbers (default: --output with .json)"
    )
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
    parser.add_argument("--iters", type=int, default=None, help="timed steps: 3 (--tiny: 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--large-batch", type=int, default=None, help="8 (--tiny: 2)")
    parser.add_argument("--large-height", type=int, default=None, help="800 (--tiny: 64)")
    parser.add_argument("--large-width", type=int, default=None, help="1333 (--tiny: 96)")
    parser.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend timed (default inductor; --tiny: aot_eager, seconds on CPU)",
    )
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
    names = ("batch_size", "height", "width", "threads", "iters")
    names += ("large_batch", "large_height", "large_width", "compile_backend")
    if args.tiny:
        defaults = (2, 64, 80, 1, 1, 2, 64, 96, "aot_eager")
    else:
        defaults = (4, 800, 1216, None, 3, 8, 800, 1333, "inductor")
    for name, default in zip(names, defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.json is None:
        args.json = os.path.splitext(args.output)[0] + ".json"
    # Images of at least 64 px: one pixel on the stride-64 level.
    for flag, value, low in (
        ("--batch-size", args.batch_size, 1),
        ("--height", args.height, 64),
        ("--width", args.width, 64),
        ("--iters", args.iters, 1),
        ("--warmup", args.warmup, 0),
        ("--large-batch", args.large_batch, 1),
        ("--large-height", args.large_height, 64),
        ("--large-width", args.large_width, 64),
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


def table_detectors() -> list[tuple[table.DetectorEntry, str]]:
    """(detector, resolved SQR config path) of every detector in :mod:`sqr.modeling.table`."""
    return [(detector, resolve_config_file(detector.config)) for detector in table.DETECTORS]


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
    ctx = Context(args, report, table_detectors())
    summary, carry, overruns = [], 0.0, 0.0
    for index, name in enumerate(sections, 1):
        title, run, share = SECTIONS[name]
        # carry: what earlier sections left (> 0) or overran (< 0).
        limit = max(0.0, share * args.budget_s + carry)
        print(f"gpu_check: {name} (limit {limit:.0f} s) ...", file=sys.stderr, flush=True)
        report.add(f"## {index}. {title}", "")
        report.section = name
        start, failures = time.monotonic(), len(report.failures)
        ctx.deadline = start + limit
        try:
            run(ctx)
        except Exception as e:  # reported; the other sections still run
            report.add(report.error(f"section {name}", e), "")
        used = time.monotonic() - start
        carry = share * args.budget_s + carry - used
        overrun = max(0.0, used - limit)
        overruns += overrun
        status = "PASS" if len(report.failures) == failures else "**FAIL**"
        summary.append([name, status, round(used, 1), round(limit, 1), round(overrun, 1)])
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(report.text(summary, summary_at))
        write_json(
            args.json,
            {
                "command": command,
                "budget_s": args.budget_s,
                "overrun_s": overruns,
                "summary": [dict(zip(SUMMARY_KEYS, row, strict=True)) for row in summary],
                "sections": report.data,
                "skipped": report.skipped,
                "failures": report.failures,
            },
            indent=2,
        )
    print(f"gpu_check: wrote {args.output} and {args.json}", file=sys.stderr)
    return 1 if report.failures else 0


def invoke_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    invoke_main()
