"""Two gloo CPU processes train like one process with the same total batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.train_net import STANDIN_CONFIG, train_and_dump

from sqr.engine import launch


@pytest.mark.slow
def test_two_processes_match_one(datasets_dir, tmp_path: Path) -> None:
    # Dropout off: each rank draws its own dropout masks, which a single process cannot mirror.
    # The stand-in pools only over valid pixels, so per-rank padding does not change features.
    argv = [
        "--config-file",
        STANDIN_CONFIG,
        "train.max_iter=4",
        "train.eval_period=0",
        "dataloader.train.total_batch_size=4",
        "model.dropout=0.0",
        "train.device=cpu",
    ]
    two, one = tmp_path / "two", tmp_path / "one"
    for path in (two, one):
        path.mkdir()
    launch(train_and_dump, 2, args=(argv + [f"train.output_dir={two}"], str(two)), device="cpu")
    train_and_dump(argv + [f"train.output_dir={one}"], str(one))

    rank0 = torch.load(two / "rank0.pt", weights_only=True)
    rank1 = torch.load(two / "rank1.pt", weights_only=True)
    single = torch.load(one / "rank0.pt", weights_only=True)
    assert rank0.keys() == rank1.keys() == single.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"ranks disagree on {key}"
        # Same samples, same augmentation; only the order of floating-point sums differs.
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_torchrun_launch(datasets_dir, tmp_path: Path) -> None:
    """Under torchrun the script joins the group from RANK/WORLD_SIZE/LOCAL_RANK itself."""
    import os
    import subprocess
    import sys

    from helpers.train_net import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(REPO / "tools" / "train_net.py"),
        "--config-file",
        STANDIN_CONFIG,
        "train.max_iter=2",
        "train.eval_period=0",
        f"train.output_dir={tmp_path}",
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "World size: 2" in (tmp_path / "log.txt").read_text()
    assert (tmp_path / "log.txt.rank1").is_file()
    assert (tmp_path / "model_final.pth").is_file()


@pytest.mark.slow
def test_non_finite_loss_on_one_rank_stops_every_rank(datasets_dir, tmp_path: Path) -> None:
    """Rank 1 alone sees a NaN loss: both ranks stop at once with the same error, not after the
    collective timeout (one minute here, so a hang fails the test quickly)."""
    import datetime
    import time

    from helpers.faults import train_with_nan_on_rank_1

    argv = [
        "--config-file",
        STANDIN_CONFIG,
        "train.max_iter=6",
        "train.checkpointer.period=1",
        "train.device=cpu",
        f"train.output_dir={tmp_path}",
    ]
    start = time.monotonic()
    launch(
        train_with_nan_on_rank_1,
        2,
        args=(argv, str(tmp_path)),
        device="cpu",
        timeout=datetime.timedelta(minutes=1),
    )
    assert time.monotonic() - start < 55
    for rank in (0, 1):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        # DDP averages rank 1's NaN gradients into both ranks' gradients.
        expected = "Non-finite loss on rank(s) [1] and gradients on rank(s) [0, 1] at iteration 2."
        assert message.startswith(expected), message
    # The state after iteration 1 gave rank 1 its NaN: the last checkpoint is iteration 0's.
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"


@pytest.mark.slow
@pytest.mark.parametrize("readable", [True, False])
def test_rank_0_decides_the_resume(datasets_dir, tmp_path: Path, readable: bool) -> None:
    """A rank that cannot see last_checkpoint follows rank 0, or every rank stops with one
    clear error when it cannot read the file: none silently restarts at iteration 0."""
    from helpers.faults import resume_where_rank_1_sees_no_checkpoint

    common = [
        "--config-file",
        STANDIN_CONFIG,
        "train.checkpointer.period=1",
        "train.device=cpu",
        f"train.output_dir={tmp_path}",
    ]
    launch(train_and_dump, 2, args=([*common, "train.max_iter=2"], str(tmp_path)), device="cpu")
    argv = ["--resume", *common, "train.max_iter=3"]
    launch(
        resume_where_rank_1_sees_no_checkpoint,
        2,
        args=(argv, str(tmp_path), readable),
        device="cpu",
    )
    messages = [(tmp_path / f"resume_rank{r}.txt").read_text() for r in (0, 1)]
    if readable:
        assert messages == ["finished", "finished"]
        log = (tmp_path / "log.txt").read_text()
        assert "model_final.pth at iteration 2" in log
    else:
        for message in messages:
            assert "rank 0 resumes from" in message and "rank(s) [1] cannot read" in message
