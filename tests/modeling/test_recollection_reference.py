"""Every detector still computes exactly what it computed when the reference was written.

The reference (``data/recollection_reference.json``) was written by
``tests/helpers/recollection_reference.py`` before the decoders moved onto the shared
recollection runner; losses, every gradient and every evaluation output must be bit-identical.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers.recollection_reference import CASES, REFERENCE, fingerprint

_EXPECTED = json.loads(REFERENCE.read_text())


@pytest.mark.skipif(
    _EXPECTED["torch"] != torch.__version__,
    reason=f"the reference was written with torch {_EXPECTED['torch']}",
)
@pytest.mark.parametrize("name", sorted(CASES))
def test_bit_identical_to_reference(name: str) -> None:
    expected, actual = _EXPECTED["cases"][name], fingerprint(name)
    assert actual["losses"] == expected["losses"]
    changed = {
        key: (expected["grads"].get(key), value)
        for key, value in actual["grads"].items()
        if expected["grads"].get(key) != value
    }
    assert actual["grads"].keys() == expected["grads"].keys()
    assert not changed, f"{len(changed)} gradients differ, e.g. {next(iter(changed.items()))}"
    assert actual["outputs"] == expected["outputs"]
