"""Every detector still computes what it computed before the decoders moved onto the shared
recollection runner.

The reference (``data/recollection_reference.json``) was written by
``tests/helpers/recollection_reference.py`` from the decoders as they were, and rewritten by the
same script from later commits that matched it bit for bit (7908e67, then 87f3846 to add the
norms and the machine); AdaMixer's gradient names there say ``decoder.layers.N`` since its
stages were renamed so (the values are untouched). Float results depend on the machine as well
as on the code: vectorised reductions round differently across instruction sets and thread
counts. So the fingerprints are
computed with a fixed thread count whatever ``OMP_NUM_THREADS`` says, and two tests share them:

* on the machine that wrote the reference (same torch, same CPU instruction set), losses,
  evaluation outputs and gradients must be bit-identical;
* on any machine, the evaluation labels must be identical and every loss, gradient and output
  close to the reference, at tolerances ten times what a different instruction set was measured
  to move them (``ATEN_CPU_CAPABILITY=default`` against the AVX2 reference).

DAB-DETR's old decoder copied each stage's source groups into one tensor even when there was
one (the first stage) and sliced the checkpointed groups back out of that copy; the runner
decodes a single group as it is and checkpoints each group's own tensor (Deformable-DETR's old
way). Autograd then sums the several gradient contributions of the initial anchors in another
order: ``anchor_box_embed.weight`` differs by rounding (measured 7e-8 relative), and with
checkpointing the recomputed graph sums in another order throughout (measured at most 1.3e-6
of ``max(1, |grad|)``). Those gradients are held to the tolerance of any machine only.
"""

from __future__ import annotations

import functools
import json
import math

import pytest
from helpers.recollection_reference import CASES, REFERENCE, fingerprint, machine

_EXPECTED = json.loads(REFERENCE.read_text())
#: Gradients whose summation order the runner changed (see the module docstring).
_REORDERED = {
    "sqr_dab_detr": {"anchor_box_embed.weight"},
    "sqr_dab_detr_dense": {"anchor_box_embed.weight"},
    "sqr_dab_detr_ckpt": "all",
}
#: Relative tolerances of the comparison on any machine (measured worst cases in comments).
_LOSS_RTOL = 1e-5  # 1.1e-6
_OUTPUT_RTOL = 2e-5  # sums and norms of boxes and scores: 2.2e-6
# Gradient norms: 5.8e-3 relative (a training-mode batch norm over 2 tiny images amplifies
# rounding), and 8.8e-8 absolute on the norms below 1e-2 (rounding noise around zero).
_GRAD_NORM_RTOL, _GRAD_NORM_ATOL = 0.05, 1e-6


@functools.cache
def _actual(name: str) -> dict:
    return fingerprint(name)


@pytest.mark.skipif(
    _EXPECTED["machine"] != machine(),
    reason=f"bit-exact only on the machine that wrote the reference: {_EXPECTED['machine']}",
)
@pytest.mark.parametrize("name", sorted(CASES))
def test_bit_identical_on_the_reference_machine(name: str) -> None:
    expected, actual = _EXPECTED["cases"][name], _actual(name)
    assert actual["losses"] == expected["losses"]
    assert actual["outputs"] == expected["outputs"]
    assert actual["grads"].keys() == expected["grads"].keys()
    reordered = _REORDERED.get(name, set())
    for key, (digest, _, _) in actual["grads"].items():
        if reordered != "all" and key not in reordered:
            assert digest == expected["grads"][key][0], f"gradient of {key} changed"


@pytest.mark.parametrize("name", sorted(CASES))
def test_close_on_any_machine(name: str) -> None:
    expected, actual = _EXPECTED["cases"][name], _actual(name)
    assert actual["losses"].keys() == expected["losses"].keys()
    for key, value in actual["losses"].items():
        reference = float.fromhex(expected["losses"][key])
        assert math.isclose(float.fromhex(value), reference, rel_tol=_LOSS_RTOL), key
    pairs = zip(actual["outputs"], expected["outputs"], strict=True)
    for image, (ours, theirs) in enumerate(pairs):
        assert ours.keys() == theirs.keys() == {"boxes", "scores", "labels"}
        assert ours["labels"] == theirs["labels"], f"labels of image {image}"
        for key in ("boxes", "scores"):
            # Positive values: their sum is as well conditioned as their norm.
            for stat in (1, 2):
                assert math.isclose(ours[key][stat], theirs[key][stat], rel_tol=_OUTPUT_RTOL), (
                    f"{key} of image {image}"
                )
    assert actual["grads"].keys() == expected["grads"].keys()
    for key, (_, _, norm) in actual["grads"].items():
        # The norm, not the sum: terms of both signs can cancel in a sum that rounding then
        # moves by far more than it moves any element.
        reference = expected["grads"][key][2]
        assert math.isclose(norm, reference, rel_tol=_GRAD_NORM_RTOL, abs_tol=_GRAD_NORM_ATOL), (
            f"gradient of {key}"
        )
