"""A training step reads from the device only where it must.

On a GPU every read of a device value (``.item()``, ``.tolist()``, ``.cpu()``, ``bool(t)``,
``.nonzero()``) stalls the host until the device has finished all queued work. A step needs
exactly: the matcher's one copy of all (group, image) costs per matching (two with two-stage
proposals), and one read of the non-finite flag. The losses are read once per log period.
Counted here on CPU, where the same calls exist, for the reads made by sqr's own code.
"""

from __future__ import annotations

import collections
import traceback
from pathlib import Path

import pytest
import torch
from helpers.detectors import build_detector
from helpers.recollection_reference import CASES, CONFIGS, _batch
from helpers.tiny import TINY_DINO

import sqr
from sqr.engine import Trainer
from sqr.utils.events import EventStorage

_READS = ("item", "tolist", "cpu", "__bool__", "nonzero")
_PACKAGE = str(Path(sqr.__file__).parent)


@pytest.fixture
def host_reads(monkeypatch) -> collections.Counter:
    """Counts reads called from sqr's code, by ``file:line``."""
    counts: collections.Counter = collections.Counter()

    def counting(name: str):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            caller = traceback.extract_stack(limit=2)[0]
            if caller.filename.startswith(_PACKAGE):
                counts[f"{Path(caller.filename).name}:{caller.lineno} {name}"] += 1
            return original(self, *args, **kwargs)

        return read

    for name in _READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    return counts


_CASES = {**CASES, "sqr_dino": ("sqr_dino_r50_4scale_12ep.py", TINY_DINO, [])}


@pytest.mark.parametrize(
    "case, matchings",
    [
        ("sqr_dab_detr", 1),
        ("sqr_deformable_detr_two_stage", 1),  # proposals matched with the decoder groups
        ("sqr_adamixer", 1),
        ("sqr_dino", 1),  # decoder groups and proposals together; denoising is pre-assigned
    ],
)
def test_a_step_reads_the_matcher_costs_and_one_flag(host_reads, case, matchings) -> None:
    config, tiny, extra = _CASES[case]
    model = build_detector(CONFIGS / config, [*tiny, *extra])
    trainer = Trainer(model, [_batch()] * 4, torch.optim.AdamW(model.parameters()), log_period=3)
    trainer.max_iter = 3
    with EventStorage(0) as trainer.storage:
        reads = []
        for trainer.iter in range(3):
            host_reads.clear()
            trainer.run_step()
            reads.append(sum(host_reads.values()))
            if trainer.iter < 2:
                step_reads = dict(host_reads)
    assert reads[:2] == [matchings + 1] * 2, step_reads
    # The last step of the log period also reads the period's losses, once.
    assert reads[2] == matchings + 2
    assert trainer.storage.history("total_loss").values()[0][1] == 0  # every step is logged
    assert len(trainer.storage.history("total_loss").values()) == 3
