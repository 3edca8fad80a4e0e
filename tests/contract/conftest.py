"""Fixtures of the detector contract suite: every entry of :mod:`sqr.modeling.table`, built once
per test module at its tiny size (SQR and baseline with the same weights)."""

from __future__ import annotations

import pytest
from contract.models import Pair, build

from sqr.modeling import table


@pytest.fixture(scope="module", params=table.DETECTORS, ids=lambda entry: entry.name)
def pair(request: pytest.FixtureRequest) -> Pair:
    entry = request.param
    sqr, baseline = build(entry), build(entry, table.BASELINE)
    baseline.load_state_dict(sqr.state_dict())
    return Pair(entry, sqr, baseline)
