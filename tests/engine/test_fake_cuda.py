"""A training forward never makes the host wait for the GPU, but for the matcher's one copy.

Each detector (baseline and SQR) runs its training forward on a fake CUDA device
(:mod:`helpers.fake_cuda`): no host-to-device copy from pageable memory, no read of a device
value, and exactly one device-to-host copy per step, the matcher's, for all the matchings of
the step (decoder groups and encoder proposals together). Non-blocking copies from pinned memory
(the loader's batch, the matcher's assignments, small constant tables) are allowed. The backward
cannot run on a fake device; ``test_host_syncs.py`` covers it on CPU.
"""

from __future__ import annotations

import pytest
from helpers.fake_cuda import audit_training_forward, fake_assignment
from helpers.recollection_reference import CONFIGS

import sqr.modeling.matcher as matcher_module
from sqr.modeling import table

# Denoising draws detrex's label noise by default, which reads a count (see the last test).
_SYNC_FREE_NOISE = ("+model.denoising.sync_free_label_noise=True",)
#: name -> (config, overrides): every detector of the table, SQR and baseline.
CASES = {
    f"{entry.name} {variant}": (
        entry.config,
        [
            *entry.tiny,
            *extra,
            *(_SYNC_FREE_NOISE if "denoising" in entry.native_modules else ()),
        ],
    )
    for entry in table.DETECTORS
    for variant, extra in (("sqr", ()), ("baseline", (table.BASELINE,)))
}


@pytest.fixture(autouse=True)
def _fake_host_solve(monkeypatch):
    # Fake tensors hold no costs to solve: assign query i to target i instead.
    monkeypatch.setattr(matcher_module, "assign_on_host", fake_assignment)
    # The Triton kernels would try to start on the fake device; the PyTorch path is the audit's.
    monkeypatch.setenv("SQR_MSDA", "pytorch")


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_training_forward_copies_to_the_host_once(name: str) -> None:
    config, overrides = CASES[name]
    audit = audit_training_forward(CONFIGS / config, overrides)
    assert audit.sites("h2d") == {}, "host-to-device copies that block the host"
    assert audit.sites("item") == {} and audit.sites("nonzero") == {}, "reads of device values"
    assert audit.total("d2h") == 1, audit.sites("d2h")
    (site,) = audit.sites("d2h")
    assert site.startswith("matcher.py:")


def test_a_batch_without_targets_copies_nothing_to_the_host() -> None:
    # Nothing to match: the matcher skips its costs and their copy.
    config, overrides = CASES["DINO sqr"]
    audit = audit_training_forward(CONFIGS / config, overrides, num_boxes=(0, 0))
    assert audit.sites("h2d") == {} and audit.total("d2h") == 0
    assert audit.sites("item") == {} and audit.sites("nonzero") == {}


def test_detrex_label_noise_reads_its_count_once() -> None:
    # The default draws detrex's random numbers, which needs the count of redrawn labels.
    dino = table.entry("DINO")
    audit = audit_training_forward(CONFIGS / dino.config, [*dino.tiny, table.BASELINE])
    assert audit.total("nonzero") == 1
    (site,) = audit.sites("nonzero")
    assert site.startswith("denoising.py:")
    assert audit.sites("h2d") == {} and audit.total("d2h") == 1
