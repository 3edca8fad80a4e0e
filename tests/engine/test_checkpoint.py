"""Checkpoints: atomic writes, pickle safety, detectron2 .pkl files and load reports."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sqr.engine import DetectionCheckpointer, UnsafeCheckpointError
from sqr.engine.checkpoint import (
    CheckpointFileError,
    IncompatibleCheckpointError,
    load_checkpoint_file,
)
from sqr.utils.file_io import remove_stale_temporaries, write_atomically


class Tiny(nn.Module):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.a = nn.Linear(2, width)
        self.b = nn.Linear(width, 1)


class Boom:
    """Unpickling this runs os.system: a stand-in for a malicious checkpoint."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    DetectionCheckpointer(model, str(tmp_path), optimizer=optimizer).save(
        "model_0000001", iteration=1
    )
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    other = Tiny()
    extra = DetectionCheckpointer(other, str(tmp_path), optimizer=optimizer).resume_or_load("")
    assert extra["iteration"] == 1
    for key, value in model.state_dict().items():
        assert torch.equal(value, other.state_dict()[key])


def test_failed_save_keeps_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    model = Tiny()
    checkpointer = DetectionCheckpointer(model, str(tmp_path))
    checkpointer.save("model_final")
    before = (tmp_path / "model_final.pth").read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with torch.no_grad():
        model.a.weight.add_(1)
    with pytest.raises(OSError, match="disk full"):
        checkpointer.save("model_final")
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_final.pth"]


def test_malicious_pth_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": Boom()}, path)
    with pytest.raises(UnsafeCheckpointError, match="evil.pth"):
        load_checkpoint_file(str(path))


def test_malicious_pkl_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": Boom()}}))
    with pytest.raises(UnsafeCheckpointError, match=r"evil.pkl.*posix.system|evil.pkl.*os.system"):
        load_checkpoint_file(str(path))


def test_detectron2_pkl_loads_arrays(tmp_path: Path) -> None:
    # detectron2's ImageNet weights: {"model": {name: ndarray}, "__author__": ...}, pickled.
    weights = {"a.weight": np.arange(6, dtype=np.float32).reshape(3, 2), "a.bias": np.ones(3)}
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"model": weights, "__author__": "torchvision"}, protocol=2))
    data = load_checkpoint_file(str(path))
    assert data["__author__"] == "torchvision"
    assert torch.equal(data["model"]["a.weight"], torch.arange(6.0).view(3, 2))


def test_load_report_counts_each_kind(tmp_path: Path) -> None:
    source = Tiny(width=3).state_dict()
    state = {
        "a.weight": source["a.weight"],  # matched
        "a.bias": source["a.bias"],  # matched
        "b.weight": torch.zeros(1, 4),  # model has [1, 3]: shape mismatch, skipped
        "extra.weight": torch.zeros(2),  # not in the model: unexpected
    }  # b.bias is absent: missing
    torch.save({"model": state}, tmp_path / "w.pth")
    model = Tiny(width=3)
    checkpointer = DetectionCheckpointer(model, str(tmp_path))
    checkpointer.load(str(tmp_path / "w.pth"), checkpointables=[])
    report = checkpointer.last_report
    assert report.matched == ["a.bias", "a.weight"]
    assert report.missing == ["b.bias"]  # b.weight counts as shape-mismatched, not missing
    assert report.unexpected == ["extra.weight"]
    assert report.shape_mismatched == [("b.weight", (1, 4), (1, 3))]
    assert torch.equal(model.a.weight, source["a.weight"])


def test_missing_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        DetectionCheckpointer(Tiny(), str(tmp_path)).load(str(tmp_path / "nothing.pth"))


def test_detectron2_backbone_pkl_is_converted_on_load(tmp_path: Path) -> None:
    """``train.init_checkpoint=R-50.pkl`` style: detectron2 names reach our torchvision names."""
    from sqr.modeling.backbone import ResNet

    class WithBackbone(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = ResNet(depth=18, out_features=("res5",))
            self.head = nn.Linear(2, 2)

    model = WithBackbone()
    ours = {k: v.clone() for k, v in model.backbone.state_dict().items()}

    def detectron2_name(name: str) -> str:  # the naming of detectron2's ResNet, by hand
        if name.startswith(("conv1", "bn1")):
            return "stem.conv1." + ("weight" if name == "conv1.weight" else "norm." + name[4:])
        layer, block, rest = name.split(".", 2)
        stage = f"res{int(layer[-1]) + 1}.{block}."
        rest = rest.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        for i in (1, 2):
            rest = rest.replace(f"bn{i}.", f"conv{i}.norm.")
        return stage + rest

    weights = {detectron2_name(k): (v + 1).numpy() for k, v in ours.items()}
    path = tmp_path / "R-18.pkl"
    path.write_bytes(pickle.dumps({"model": weights, "__author__": "torchvision"}))
    checkpointer = DetectionCheckpointer(model, str(tmp_path))
    checkpointer.load(str(path), checkpointables=[])
    report = checkpointer.last_report
    assert report.missing == ["head.bias", "head.weight"] and not report.unexpected
    assert len(report.matched) == len(ours)
    loaded = model.backbone.layer2[0].downsample[1].weight  # shortcut.norm in detectron2's names
    assert torch.equal(loaded, ours["layer2.0.downsample.1.weight"] + 1)


def test_mmdet_checkpoint_loads_its_state_dict(tmp_path) -> None:
    # mmcv saves {"meta", "state_dict", "optimizer"}: the weights are under "state_dict".
    weights = {"backbone.conv1.weight": torch.ones(2, 3, 1, 1)}
    path = tmp_path / "mmdet.pth"
    torch.save({"meta": {"epoch": 12}, "state_dict": weights, "optimizer": {}}, path)
    data = load_checkpoint_file(str(path))
    assert list(data) == ["model"]
    assert torch.equal(data["model"]["backbone.conv1.weight"], weights["backbone.conv1.weight"])


def test_write_atomically_keeps_the_old_file_when_writing_fails(tmp_path) -> None:
    from sqr.utils.file_io import write_atomically

    path = tmp_path / "sub" / "results.json"
    write_atomically(str(path), lambda f: f.write('{"AP": 1}'), mode="w")
    assert path.read_text() == '{"AP": 1}'

    def fail(f) -> None:
        f.write('{"AP": ')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(str(path), fail, mode="w")
    assert path.read_text() == '{"AP": 1}'  # untouched
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temp file left


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"hello, this is a text file\n", "not a PyTorch checkpoint"),
        ("half", "truncated or corrupt"),  # the first half of a real checkpoint
    ],
)
def test_broken_files_are_named(tmp_path: Path, content, message) -> None:
    path = tmp_path / "broken.pth"
    if content == "half":
        torch.save({"model": Tiny().state_dict()}, path)
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(CheckpointFileError, match=message) as info:
        load_checkpoint_file(str(path))
    assert str(path) in str(info.value)
    assert "weights_only=False" not in str(info.value)  # never advise unsafe unpickling


def test_every_truncation_of_a_small_checkpoint_is_named(tmp_path: Path) -> None:
    # Small zip archives cut short fail inside torch.load with a bare OSError (errno 22, the
    # reader seeking before the start of the file) rather than the RuntimeError of large ones.
    whole = tmp_path / "whole.pth"
    torch.save({"model": {"w": torch.zeros(15_000)}}, whole)  # 60 KB
    data = whole.read_bytes()
    path = tmp_path / "cut.pth"
    for end in range(8, len(data), max(1, len(data) // 40)):  # past the 4-byte zip magic
        path.write_bytes(data[:end])
        with pytest.raises(CheckpointFileError, match="truncated or corrupt") as info:
            load_checkpoint_file(str(path))
        assert str(path) in str(info.value), end


def test_load_requiring_every_tensor_refuses_before_touching_the_model(tmp_path: Path) -> None:
    trained = Tiny(width=3)
    torch.save({"model": {**trained.state_dict(), "b.weight": torch.zeros(1, 4)}}, tmp_path / "w")
    model = Tiny(width=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    checkpointer = DetectionCheckpointer(model, str(tmp_path))
    with pytest.raises(IncompatibleCheckpointError, match=r"b\.weight checkpoint \(1, 4\)"):
        checkpointer.load(str(tmp_path / "w"), checkpointables=[], require_complete=True)
    for key, value in model.state_dict().items():  # nothing was loaded, not even a.weight
        assert torch.equal(value, before[key]), key


def test_checkpoint_matching_nothing_is_refused(tmp_path: Path) -> None:
    torch.save({"model": {"other.weight": torch.zeros(2)}}, tmp_path / "w.pth")
    with pytest.raises(IncompatibleCheckpointError, match="none of its 1 tensors"):
        DetectionCheckpointer(Tiny(), "").load(str(tmp_path / "w.pth"), checkpointables=[])


def test_partial_load_warns_with_the_keys(tmp_path: Path, caplog) -> None:
    torch.save({"model": {"a.weight": Tiny().a.weight.detach()}}, tmp_path / "w.pth")
    with caplog.at_level("WARNING", logger="sqr.engine.checkpoint"):
        DetectionCheckpointer(Tiny(), "").load(str(tmp_path / "w.pth"), checkpointables=[])
    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "missing 3" in warnings and "b.{bias, weight}" in warnings  # grouped by fvcore


def test_written_files_honour_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        write_atomically(str(tmp_path / "a.json"), lambda f: f.write("{}"), mode="w")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640  # 0o666 & ~0o027


def test_stale_temporaries_are_removed(tmp_path: Path) -> None:
    (tmp_path / "inference").mkdir()
    stale = [tmp_path / ".tmp_abcmodel_0000009.pth", tmp_path / "inference" / ".tmp_xyzres.json"]
    for path in stale:
        path.write_bytes(b"partial")
    (tmp_path / "model_0000009.pth").write_bytes(b"kept")
    removed = remove_stale_temporaries(str(tmp_path))
    assert sorted(removed) == sorted(map(str, stale))
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["model_0000009.pth"]
