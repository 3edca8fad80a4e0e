"""The command line keeps detectron2's flags and refuses flags lost among the overrides."""

from __future__ import annotations

import pytest

from sqr.engine import default_argument_parser


def test_flags_then_overrides() -> None:
    args = default_argument_parser().parse_args(
        [
            "--config-file",
            "c.py",
            "--num-gpus",
            "2",
            "--num-machines",
            "2",
            "--machine-rank",
            "1",
            "--dist-url",
            "tcp://10.0.0.1:1234",
            "--resume",
            "train.max_iter=5",
            "train.device=cpu",
        ]
    )
    assert args.config_file == "c.py" and args.num_gpus == 2
    assert args.num_machines == 2 and args.machine_rank == 1
    assert args.dist_url == "tcp://10.0.0.1:1234" and args.resume and not args.eval_only
    assert args.opts == ["train.max_iter=5", "train.device=cpu"]


def test_flag_after_overrides_is_an_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        default_argument_parser().parse_args(
            ["--config-file", "c.py", "train.max_iter=5", "--eval-only"]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--eval-only" in err and "before the first key=value override" in err
