"""train.sync_bn: BatchNorm becomes SyncBatchNorm for a multi-GPU run (RT-DETR's sync_bn), the
frozen norms and the optimizer's tensors untouched; a CPU or single-process run is left as is."""

from __future__ import annotations

import logging

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from sqr.engine.defaults import with_sync_batch_norm


def model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 1),
        nn.BatchNorm2d(4),
        FrozenBatchNorm2d(4),
        nn.Sequential(nn.BatchNorm1d(4)),
    )


def test_a_multi_gpu_run_gets_sync_batch_norm_with_the_same_tensors() -> None:
    plain = model()
    params = {name: p for name, p in plain.named_parameters()}
    buffers = {name: b for name, b in plain.named_buffers()}
    synced = with_sync_batch_norm(plain, "cuda", world_size=2)
    kinds = [type(m) for m in synced.modules() if "Norm" in type(m).__name__]
    assert kinds == [nn.SyncBatchNorm, FrozenBatchNorm2d, nn.SyncBatchNorm]
    assert all(p is params[name] for name, p in synced.named_parameters())
    assert all(b is buffers[name] for name, b in synced.named_buffers())


def test_one_process_or_a_cpu_run_is_left_as_it_is(caplog) -> None:
    single = model()
    assert with_sync_batch_norm(single, "cuda", world_size=1) is single
    cpu = model()
    with caplog.at_level(logging.WARNING, logger="sqr.engine.defaults"):
        assert with_sync_batch_norm(cpu, "cpu", world_size=2) is cpu
    assert "train.sync_bn=True is ignored on cpu" in caplog.text
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in cpu.modules())
