"""The command line keeps detectron2's flags and refuses flags lost among the overrides;
``--config-file`` takes a path or a config name."""

from __future__ import annotations

from pathlib import Path

import pytest

from sqr.engine import default_argument_parser, load_config, resolve_config_file

CONFIGS = Path(__file__).resolve().parents[2] / "projects" / "sqr" / "configs"


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


def test_config_file_is_required(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        default_argument_parser().parse_args(["--eval-only"])
    assert exit_info.value.code == 2
    assert "--config-file" in capsys.readouterr().err


def test_config_file_is_a_path_or_a_name(tmp_path: Path, monkeypatch) -> None:
    name = "quickstart/sqr_dab_detr_synthetic.py"
    assert resolve_config_file(name) == str(CONFIGS / name)
    # An existing path wins over the config of the same name.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart").mkdir()
    (tmp_path / name).write_text("train = dict(device='cpu')\n")
    assert resolve_config_file(name) == name
    args = default_argument_parser().parse_args(["--config-file", "sqr_dab_detr_r50_50ep.py"])
    assert load_config(args).model.recollection.mode == "selective"


def test_unknown_config_file_names_path_and_roots(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        resolve_config_file("sqr_dab_detr.py")
    message = str(info.value)
    assert f"{tmp_path / 'sqr_dab_detr.py'} does not exist" in message
    assert str(CONFIGS) in message and "close matches: sqr_dab_detr_r50_50ep.py" in message


def test_tools_offer_only_the_flags_they_use() -> None:
    from sqr.tools import analyze_stages, visualize

    visualize_help = visualize.build_parser().format_help()
    for flag in ("--resume", "--eval-only", "--num-gpus", "--dist-url"):
        assert flag not in visualize_help, flag
    analyze_help = analyze_stages.build_parser().format_help()
    assert "--resume" not in analyze_help and "--eval-only" not in analyze_help
    assert "--num-gpus" in analyze_help  # the analysis runs on several processes


def test_override_before_the_flags_is_named(capsys) -> None:
    # argparse's REMAINDER takes everything from the first override on, --config-file included.
    with pytest.raises(SystemExit) as exit_info:
        default_argument_parser().parse_args(["train.max_iter=5", "--config-file", "c.py"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--config-file came after the config overrides" in err
    assert "required" not in err
