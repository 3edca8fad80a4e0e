"""sqr.tools.benchmark: tiny DAB-DETR variants in child processes, JSON contents, input errors.

No timing thresholds: only that the numbers exist, are consistent with each other, and that bad
input fails with a message naming it.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import pytest
import torch
from helpers.tiny import TINY_DAB_DETR

from sqr.tools import _workload, benchmark

ROOT = Path(__file__).resolve().parents[2]
SQR_CONFIG = str(ROOT / "projects/sqr/configs/sqr_dab_detr_r50_50ep.py")
BASELINE_CONFIG = str(ROOT / "projects/sqr/configs/dab_detr_r50_50ep.py")
SMALL = ["--batch-size", "1", "--height", "64", "--width", "64", "--iters", "2", "--warmup", "1"]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return benchmark


@pytest.mark.slow
def test_compare_sqr_writes_consistent_json(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["--config-file", SQR_CONFIG, "--compare-sqr", *SMALL, "--json", str(out)]
    assert bench.main([*argv, *TINY_DAB_DETR]) == 0

    data = json.loads(out.read_text())
    variants = data["variants"]
    assert list(variants) == ["baseline", "sqr", "sqr+ckpt"]
    for name, result in variants.items():
        assert result["train_step_s"] > 0, name
        assert result["inference_s_per_img"] > 0, name
        assert result["peak_memory_mb"] > 0, name
        assert result["train_memory_mb"] > 0, name
        assert result["peak_memory_mb"] == pytest.approx(
            result["setup_memory_mb"] + result["train_memory_mb"]
        )
        assert 0 < result["decoder_share"] < 1, name
        # The scipy solves ran in every timed step, inside it.
        assert len(result["host_match_times_s"]) == 2
        assert 0 < result["host_match_s"] < result["train_step_s"], name
        assert result["host_match_solves_per_step"] > 0, name
        fed = _workload.synthetic_batch(1, 64, 64, num_classes=5, seed=0)
        assert result["boxes_per_image"] == [len(x["targets"]["labels"]) for x in fed]
        assert len(result["train_step_times_s"]) == 2
        # The median of two timed steps is their mean.
        assert result["train_step_s"] == pytest.approx(sum(result["train_step_times_s"]) / 2)
        assert result["decoder_share"] == pytest.approx(
            result["decoder_s"] / result["train_step_s"]
        )
    assert [variants[n]["num_groups"] for n in variants] == [6, 32, 32]
    assert variants["baseline"]["recollection_mode"] == "none"
    assert variants["sqr"]["recollection_mode"] == "selective"
    assert variants["sqr+ckpt"]["overrides"][-1] == "model.decoder.checkpoint_recollected=True"

    base = variants["baseline"]
    assert set(data["ratios"]) == {"sqr", "sqr+ckpt"}
    for name, ratios in data["ratios"].items():
        for key in ("train_step_s", "peak_memory_mb", "train_memory_mb", "inference_s_per_img"):
            assert ratios[key] == pytest.approx(variants[name][key] / base[key]), (name, key)
    assert data["step_bound"] == pytest.approx(1 + (32 - 6) / 6 * base["decoder_share"])

    settings = data["settings"]
    picked = {k: settings[k] for k in ("batch_size", "height", "width", "compare_sqr")}
    assert picked == {"batch_size": 1, "height": 64, "width": 64, "compare_sqr": True}
    assert settings["device"] == "cpu"
    assert settings["overrides"] == TINY_DAB_DETR
    assert settings["torch_version"]


@pytest.mark.slow
def test_single_variant_has_no_ratios(bench: ModuleType, tmp_path: Path, capsys) -> None:
    out = tmp_path / "one.json"
    argv = ["--config-file", BASELINE_CONFIG, *SMALL, "--threads", "1", "--json", str(out)]
    assert bench.main([*argv, *TINY_DAB_DETR]) == 0
    data = json.loads(out.read_text())
    assert list(data["variants"]) == ["config"]
    assert data["variants"]["config"]["threads"] == data["settings"]["threads_used"] == 1
    assert data["ratios"] == {} and data["step_bound"] is None
    assert "| config | 6 |" in capsys.readouterr().out


def test_unknown_override_key_fails_naming_it(bench: ModuleType, capsys) -> None:
    argv = ["--config-file", SQR_CONFIG, "--compare-sqr", *SMALL, "model.no_such_key=1"]
    assert bench.main(argv) != 0
    assert "model.no_such_key" in capsys.readouterr().err


def test_missing_config_file_fails_naming_it(bench: ModuleType, tmp_path: Path, capsys) -> None:
    missing = str(tmp_path / "nope.py")
    assert bench.main(["--config-file", missing, *SMALL]) != 0
    assert "nope.py" in capsys.readouterr().err


def test_compare_sqr_rejects_a_baseline_config(bench: ModuleType, capsys) -> None:
    assert bench.main(["--config-file", BASELINE_CONFIG, "--compare-sqr", *SMALL]) != 0
    assert "mode='none'" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--iters", "0"), ("--batch-size", "-1")])
def test_bad_numbers_fail_naming_them(bench: ModuleType, capsys, flag: str, value: str) -> None:
    assert bench.main(["--config-file", SQR_CONFIG, *SMALL, flag, value]) != 0
    err = capsys.readouterr().err
    assert flag in err and value in err


def test_synthetic_boxes_are_valid_and_reproducible() -> None:
    batch = _workload.synthetic_batch(3, 48, 80, num_classes=5, seed=1)
    again = _workload.synthetic_batch(3, 48, 80, num_classes=5, seed=1)
    for x, y in zip(batch, again, strict=True):
        assert x["image"].shape == (3, 48, 80) and x["image"].equal(y["image"])
        boxes = x["targets"]["boxes"]
        assert boxes.equal(y["targets"]["boxes"]) and 1 <= len(boxes) <= 90
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert (boxes >= 0).all() and (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 48).all()
        assert ((x["targets"]["labels"] >= 0) & (x["targets"]["labels"] < 5)).all()


@pytest.mark.slow
def test_keep_freed_memory_reaches_the_child(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["--config-file", SQR_CONFIG, *SMALL, "--threads", "1", "--json", str(out)]
    assert bench.main([*argv, "--keep-freed-memory", *TINY_DAB_DETR]) == 0
    (variant,) = json.loads(out.read_text())["variants"].values()
    assert variant["keeps_freed_memory"] is True  # applied inside the child (glibc here)
    # Without the flag the child keeps glibc's defaults.
    assert bench.main([*argv, *TINY_DAB_DETR]) == 0
    (variant,) = json.loads(out.read_text())["variants"].values()
    assert variant["keeps_freed_memory"] is False


def test_box_counts_are_coco_like() -> None:
    # COCO train2017: mean about 7.3 boxes per image, median 4, p90 about 20, maximum 93.
    counts = _workload.coco_like_box_counts(10_000, torch.Generator().manual_seed(0))
    counts.sort()
    assert 6.5 <= sum(counts) / len(counts) <= 8.0
    assert counts[len(counts) // 2] == 4
    assert 18 <= counts[int(0.9 * len(counts))] <= 22
    assert 50 <= counts[-1] <= 90 and counts[0] >= 1
    assert 0.005 <= sum(c >= 50 for c in counts) / len(counts) <= 0.02


def test_small_batches_span_the_distribution() -> None:
    # Stratified: the last of 8 images lies in the top eighth (at least 13 boxes), the first in
    # the bottom one; a seed reproduces the counts.
    for seed in range(5):
        counts = _workload.coco_like_box_counts(8, torch.Generator().manual_seed(seed))
        assert counts == sorted(counts) and counts[0] <= 2 and counts[-1] >= 13, counts
        assert counts == _workload.coco_like_box_counts(8, torch.Generator().manual_seed(seed))
    with pytest.raises(ValueError, match="got 1.0"):
        _workload.box_count_quantile(1.0)


def test_host_matching_timer_counts_overlapping_solves_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqr.modeling import matcher

    def solve(cost):  # 50 ms each
        time.sleep(0.05)
        return cost

    monkeypatch.setattr(matcher, "linear_sum_assignment", solve)
    with _workload.HostMatchingTimer() as timer:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(matcher.linear_sum_assignment, range(4)))
        parallel, parallel_count = timer.take()
        for i in range(2):
            matcher.linear_sum_assignment(i)
        serial, serial_count = timer.take()
    assert matcher.linear_sum_assignment is solve  # restored
    assert parallel_count == 4 and 0.05 <= parallel < 0.15  # side by side: about one solve
    assert serial_count == 2 and 0.1 <= serial < 0.2
    assert timer.take() == (0.0, 0)


def test_host_matching_timer_times_the_real_matcher() -> None:
    from sqr.modeling.matcher import HungarianMatcher

    gen = torch.Generator().manual_seed(0)
    logits, boxes = torch.randn(2, 3, 20, 5, generator=gen), torch.rand(2, 3, 20, 4, generator=gen)
    targets = [
        {"labels": torch.zeros(n, dtype=torch.int64), "boxes": torch.rand(n, 4, generator=gen)}
        for n in (3, 0, 7)
    ]
    with _workload.HostMatchingTimer() as timer:
        HungarianMatcher()(logits, boxes * 0.5 + 0.25, targets)
        seconds, solves = timer.take()
    assert solves == 4 and seconds > 0  # 2 groups x the 2 images with targets


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--inference", "--compare-sqr"], "--compare-sqr"),
        (["--inference", "--height", "64"], "--width"),
        (["--inference", "--batch-sizes", "1", "0"], "--batch-sizes must be >= 1, got 0"),
        (["--batch-sizes", "1"], "--batch-sizes is for --inference"),
    ],
)
def test_inference_flags_fail_naming_them(bench: ModuleType, capsys, argv, named) -> None:
    assert bench.main(["--config-file", SQR_CONFIG, *argv]) == 2
    assert named in capsys.readouterr().err


def test_training_benchmark_keeps_its_default_size(bench: ModuleType) -> None:
    # --height/--width default to the recipe's eval size only for --inference.
    args = bench.build_parser().parse_args(["--config-file", SQR_CONFIG])
    assert bench.validate(args) == {"config": []}
    assert (args.height, args.width, args.batch_sizes) == (512, 640, None)
    args = bench.build_parser().parse_args(["--config-file", SQR_CONFIG, "--inference"])
    bench.validate(args)
    assert (args.height, args.width, args.batch_sizes) == (None, None, [1, 4])


def test_inference_without_a_readable_eval_size_fails_naming_the_config(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from sqr.export import benchmark as inference

    def unreadable(cfg, size_divisibility=1):
        raise inference.EvalSizeError("dataloader.test.mapper.augmentation (Foo) sets neither")

    monkeypatch.setattr(inference, "eval_size", unreadable)
    argv = ["--inference", "--config-file", BASELINE_CONFIG, *TINY_DAB_DETR]
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert "dab_detr_r50_50ep.py" in err and "(Foo) sets neither" in err
