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
from helpers.recollection_reference import CONFIGS, _batch

import sqr
from sqr.engine import Trainer
from sqr.modeling import table
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


# One copy of the matcher's costs per step for every detector: two-stage proposals are matched
# with the decoder groups, DINO's denoising queries are pre-assigned.
MATCHINGS = 1


@pytest.mark.parametrize("entry", table.DETECTORS, ids=lambda entry: entry.name)
def test_a_step_reads_the_matcher_costs_and_one_flag(host_reads, entry) -> None:
    model = build_detector(CONFIGS / entry.config, list(entry.tiny))
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
    assert reads[:2] == [MATCHINGS + 1] * 2, step_reads
    # The last step of the log period also reads the period's losses, once.
    assert reads[2] == MATCHINGS + 2
    assert trainer.storage.history("total_loss").values()[0][1] == 0  # every step is logged
    assert len(trainer.storage.history("total_loss").values()) == 3
