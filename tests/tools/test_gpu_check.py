"""sqr.tools.gpu_check: the CPU dry run end to end (so the GPU command cannot rot unseen), its
failure reporting, time limits and input errors."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch

from sqr.modeling import table
from sqr.modeling.sqr import RecollectionSchedule
from sqr.tools import _device_checks as checks
from sqr.tools import _gpu_benchmarks as gpu_benchmarks
from sqr.tools import _step_timing as timing
from sqr.tools import gpu_check

DRY_RUN = ["--device", "cpu", "--tiny"]


def test_help_describes_the_sections(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for text in ("--tiny", "--output", "--budget-s", *gpu_check.SECTIONS):
        assert text in out


def section(report: str, title: str) -> str:
    """The text of the report's section titled ``title`` (up to the next section)."""
    return report.split(f". {title}\n")[1].split("\n## ")[0]


@pytest.mark.slow
@pytest.mark.timeout(900)  # every section and detector, traced compile included
def test_dry_run_writes_a_passing_report(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "report.md"
    assert gpu_check.main([*DRY_RUN, "--output", str(out)]) == 0
    report = out.read_text()
    summary = report.split("## Summary")[1].split("## 1.")[0]
    for name in gpu_check.SECTIONS:
        assert f"| {name} | PASS |" in summary, name
    names = [d.name for d in table.DETECTORS]
    equivalence = section(report, "SQR equivalence")
    steps = section(report, "Training steps per precision")
    for name in names:
        # Four checks per detector: eval, chain, checkpointed losses and gradients.
        assert f"| {name} | " in equivalence and equivalence.count(f"| {name} |") == 1
        assert equivalence.split(f"| {name} |")[1].split("\n")[0].count("PASS") == 4, name
        # The baseline decodes one group per stage; SQR the selective schedule of that depth.
        stages = re.search(rf"\| {re.escape(name)} \| baseline \| (\d+) \| fp32 \|", steps)
        assert stages, name
        groups = RecollectionSchedule(int(stages.group(1)), "selective").num_groups
        assert f"| {name} | sqr | {groups} | fp32 |" in steps, name
    # Off CUDA: the PyTorch path alone, fp32 alone, no sync counts; all said in the report.
    assert "takes **pytorch** here" in report
    assert "| 10 | pytorch |" in report and "(encoder) | pytorch |" in report
    assert "| tf32 |" not in report and "| bf16 |" not in report
    large = section(report, "Large batch")
    for variant in ("baseline", "sqr"):
        assert f"| Deformable-DETR | {variant} |" in large and f"| DINO | {variant} |" in large
    assert "| DDP | gloo |" in section(report, "One-rank DDP step")
    assert "| aot_eager |" in section(report, "torch.compile")
    assert "| 0 |" in section(report, "Loader throughput")
    skipped = report.split("## Skipped")[1].split("## Failures")[0]
    assert "Triton path (not on CUDA)" in skipped
    assert "TF32, bf16, fp16, MSDA backends, syncs (not on CUDA)" in skipped
    assert f"benchmark: {names[-1]} (dry run" in skipped
    benchmark = section(report, "tools/benchmark.py --compare-sqr")
    assert "--compare-sqr --device cpu" in benchmark
    for variant in ("| baseline | 6 |", "| sqr | 32 |", "| sqr+ckpt | 32 |"):
        assert variant in benchmark
    assert report.split("## Failures")[1].strip() == "- none"
    data = json.loads(out.with_suffix(".json").read_text())
    assert [row["section"] for row in data["summary"]] == list(gpu_check.SECTIONS)
    assert data["failures"] == [] and data["sections"]["benchmark"][0]["variants"]


def test_a_cheap_dry_run_writes_markdown_and_json(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    argv = [*DRY_RUN, "--sections", "ddp,loader", "--output", str(out)]
    assert gpu_check.main([*argv, "--json", str(tmp_path / "numbers.json")]) == 0
    report = out.read_text()
    ddp = section(report, "One-rank DDP step")
    assert "| plain | - |" in ddp and "| DDP | gloo |" in ddp
    data = json.loads((tmp_path / "numbers.json").read_text())
    rows = data["sections"]["ddp"]
    assert [r["model"] for r in rows] == ["plain", "DDP"]
    for row in rows:  # raw numbers in the JSON, rounded in the markdown
        assert row["step (ms)"] == pytest.approx(row["fwd (ms)"] + row["bwd+opt (ms)"])
        assert row["step (ms)"] > 0
    (loader,) = data["sections"]["loader"]
    assert loader["workers"] == 0 and loader["images/s"] > 0
    assert [r["section"] for r in data["summary"]] == ["ddp", "loader"]


def test_an_overrun_is_taken_from_the_next_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # msda runs 0.3 s past its limit of 0.1 s (budget 2 s x 5%): the next section's limit is its
    # own share minus the overrun, and the summary counts the overrun.
    ran = {}

    def slow(ctx) -> None:
        time.sleep(0.4)

    def record(ctx) -> None:
        ran["limit"] = ctx.deadline - time.monotonic()

    sections = dict(gpu_check.SECTIONS)
    sections["msda"] = ("slow", slow, 0.05)
    sections["ddp"] = ("record", record, 0.5)
    monkeypatch.setattr(gpu_check, "SECTIONS", sections)
    out = tmp_path / "report.md"
    argv = [*DRY_RUN, "--sections", "msda,ddp", "--budget-s", "2", "--output", str(out)]
    assert gpu_check.main(argv) == 0
    assert 0.5 < ran["limit"] <= 1.0 - 0.3  # 1 s share, less the 0.3 s overrun
    summary = json.loads(out.with_suffix(".json").read_text())["summary"]
    assert summary[0]["overrun_s"] >= 0.3 and summary[1]["overrun_s"] == 0.0
    assert "| overrun (s) |" in out.read_text()


def test_a_failed_check_fails_the_run_and_is_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQR's chain drifting from the plain decoder by 1% must not pass.
    diffs = {"eval": 0.0, "chain": 1e-2, "losses": 0.0, "grads": 0.0}
    monkeypatch.setattr(checks, "sqr_equivalence", lambda sqr, plain, batch: diffs)
    monkeypatch.setattr(table, "DETECTORS", table.DETECTORS[:1])
    out = tmp_path / "report.md"
    assert gpu_check.main([*DRY_RUN, "--sections", "equivalence", "--output", str(out)]) == 1
    report = out.read_text()
    assert "| equivalence | **FAIL** |" in report
    assert "| DAB-DETR | 0.0e+00 PASS | 1.0e-02 **FAIL** |" in report
    assert "- DAB-DETR: SQR chain == plain: 1.0e-02 > 1e-04" in report


def test_an_item_that_raises_is_reported_and_the_rest_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def broken(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("out of luck")

    monkeypatch.setattr(checks, "msda_forward_backward", broken)
    out = tmp_path / "report.md"
    assert gpu_check.main([*DRY_RUN, "--sections", "msda", "--output", str(out)]) == 1
    report = out.read_text()
    assert len(calls) == 2  # both sizes tried: 10 queries and the encoder's
    assert report.count("**error** RuntimeError: out of luck") == 2
    assert "- msda, 10 queries: RuntimeError: out of luck" in report


def test_items_past_the_time_limit_are_skipped_and_listed(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    argv = [*DRY_RUN, "--sections", "train_step", "--budget-s", "1e-9", "--output", str(out)]
    assert gpu_check.main(argv) == 0
    skipped = out.read_text().split("## Skipped")[1]
    for detector in table.DETECTORS:
        for variant in ("baseline", "sqr"):
            assert f"train_step: {detector.name} {variant} (section time limit)" in skipped


def test_tiny_run_uses_the_tables_overrides() -> None:
    ctx = gpu_check.Context(gpu_check.build_parser().parse_args(DRY_RUN), gpu_check.Report(), [])
    for detector in table.DETECTORS:
        assert ctx.overrides(detector, "x=1") == [*detector.tiny, "x=1"], detector.name
    assert [d for d, _ in gpu_check.table_detectors()] == list(table.DETECTORS)


def test_level_shapes_at_coco_size() -> None:
    # 800x1216 at strides 8, 16, 32 (ResNet C3-C5) and 64 (a stride-2 conv on C5, rounding up).
    assert checks.level_shapes(800, 1216) == [(100, 152), (50, 76), (25, 38), (13, 19)]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--sections", "msda,nope"], "nope"),
        (["--height", "32"], "--height"),
        (["--threads", "0"], "--threads"),
        (["--budget-s", "0"], "--budget-s"),
    ],
)
def test_bad_input_fails_naming_it(capsys, argv: list[str], named: str) -> None:
    assert gpu_check.main([*DRY_RUN, *argv]) == 2
    assert named in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_fails_naming_the_dry_run(capsys) -> None:
    assert gpu_check.main(["--device", "cuda"]) == 2
    assert "--device cpu" in capsys.readouterr().err


class LossModel(torch.nn.Module):
    """A model in the detectors' contract: a batch in, a dict of losses out."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        x = torch.stack([b["x"] for b in batch])
        return {"loss": self.linear(x).float().pow(2).mean()}


@pytest.mark.parametrize("precision", list(timing.PRECISIONS))
def test_every_precision_steps_and_times(precision: str) -> None:
    torch.manual_seed(0)
    model = LossModel()
    before = model.linear.weight.detach().clone()
    step = timing.Stepper(model, precision, "cpu")
    assert (step.scaler is not None) == (precision == "fp16")  # fp16 trains with a GradScaler
    times = timing.time_steps(step, [{"x": torch.ones(4)}] * 2, iters=2, warmup=1)
    assert not torch.equal(model.linear.weight, before)  # three optimizer steps ran
    assert times.forward_ms > 0 and times.backward_ms > 0 and times.host_match_ms == 0.0
    assert times.step_ms == times.forward_ms + times.backward_ms
    assert times.peak_mb is None and times.loss > 0  # no CUDA memory off CUDA


def test_latency_dry_run_times_rtdetrv2(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    assert gpu_check.main([*DRY_RUN, "--sections", "latency", "--output", str(out)]) == 0
    report = out.read_text()
    latency = section(report, "Inference latency (RT-DETRv2)")
    assert "64x64 normalised images" in latency
    rows = json.loads(out.with_suffix(".json").read_text())["sections"]["latency"]
    assert [(r["detector"], r["precision"], r["batch"]) for r in rows] == [
        ("RT-DETRv2-S R18vd", "fp32", 1),
        ("RT-DETRv2-S R18vd", "fp32", 2),
    ]
    for row in rows:
        assert row["ms per image"] > 0
        assert row["images/s"] == pytest.approx(1e3 / row["ms per image"])
        assert f"| {row['detector']} | fp32 | {row['batch']} |" in latency
    assert "- latency: fp16 autocast (not on CUDA)" in report.split("## Skipped")[1]


def test_latency_on_cuda_times_fp32_and_fp16_at_640(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the GPU run asks for, without a GPU: RT-DETRv2's baseline at 640x640, batch 1 and 8,
    # fp32 and fp16 autocast, on CUDA, full size.
    asked = {}

    def build(path, overrides, device):
        asked["build"] = (path, list(overrides), device)
        return "model"

    def rows(model, size, batches, precisions, device, iters, warmup):
        asked["rows"] = (model, size, tuple(batches), list(precisions), device, iters, warmup)
        return [[p, b, 2.0, 500.0] for p in precisions for b in batches]

    monkeypatch.setattr(checks, "build_model", build)
    monkeypatch.setattr(checks, "latency_rows", rows)
    monkeypatch.setattr(checks, "free_memory", lambda device: None)
    args = gpu_check.build_parser().parse_args(["--device", "cpu"])
    gpu_check.validate(args)
    args.device = "cuda"
    ctx = gpu_check.Context(args, gpu_check.Report(), gpu_check.table_detectors())
    ctx.report.section = "latency"
    gpu_benchmarks.section_latency(ctx)
    detector = next(d for d in table.DETECTORS if d.family == "rtdetrv2")
    path, overrides, device = asked["build"]
    assert path.endswith(detector.config) and device == "cuda"
    assert overrides == [table.BASELINE]  # full size: no tiny overrides
    assert asked["rows"] == ("model", 640, (1, 8), ["fp32", "fp16"], "cuda", 20, 5)
    recorded = [(r["precision"], r["batch"]) for r in ctx.report.data["latency"]]
    assert recorded == [("fp32", 1), ("fp32", 8), ("fp16", 1), ("fp16", 8)]
    assert ctx.report.skipped == [] and ctx.report.failures == []


def test_latency_without_rtdetrv2_is_skipped_and_listed() -> None:
    args = gpu_check.build_parser().parse_args(DRY_RUN)
    gpu_check.validate(args)
    others = [(d, p) for d, p in gpu_check.table_detectors() if d.family != "rtdetrv2"]
    ctx = gpu_check.Context(args, gpu_check.Report(), others)
    gpu_benchmarks.section_latency(ctx)
    assert ctx.report.skipped == ["latency: the table has no RT-DETRv2 entry"]
