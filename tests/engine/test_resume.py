"""``--resume`` applies what the command line changed, says so, and loses no record of a run."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.train_net import load_train_net, run_standin


@pytest.fixture(scope="module")
def train_net():
    return load_train_net()


def test_last_checkpoint_naming_a_missing_file(train_net, datasets_dir, tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(FileNotFoundError) as info:
        run_standin(train_net, tmp_path, "train.max_iter=2", flags=("--resume",))
    message = str(info.value)
    assert f"{tmp_path / 'last_checkpoint'} names {tmp_path / 'model_0000009.pth'}" in message
    assert "does not exist" in message
    assert "rank" not in message and "shared filesystem" not in message
