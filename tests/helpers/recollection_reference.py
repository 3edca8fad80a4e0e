"""Fingerprints of every detector's training and evaluation results, to prove a refactor of the
decoders bit-identical.

``PYTHONPATH=tests python -m helpers.recollection_reference`` writes
``tests/modeling/data/recollection_reference.json`` from the code as it is;
``tests/modeling/test_recollection_reference.py`` recomputes the same fingerprints and
requires every one to be equal. Each case builds a tiny detector from seed 0 and records, for one
training step on a fixed batch, every loss (as the exact float), and every parameter gradient
and every evaluation output as the SHA-256 of its bytes with its sum and its Euclidean norm.

Float results depend on the machine as well as on the code: vectorised reductions round
differently across instruction sets and thread counts. The reference therefore records the
machine that wrote it (:func:`machine`), and is computed with :data:`NUM_THREADS` threads
whatever the environment says. Digests and exact losses hold on that machine only; the norms,
which rounding moves by about as much as it moves the elements (a sum of terms of both signs
can move by far more), are what another machine can compare at a tolerance.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from helpers.detectors import ONE_OBJECT, TWO_OBJECTS, build_detector, detection_batch
from helpers.tiny import TINY_ADAMIXER, TINY_DAB_DETR, TINY_DEFORMABLE_DETR

CONFIGS = Path(__file__).resolve().parents[2] / "projects" / "sqr" / "configs"
REFERENCE = (
    Path(__file__).resolve().parents[1] / "modeling" / "data" / "recollection_reference.json"
)

#: Intra-op threads of every fingerprint: the partition of a parallel reduction is part of its
#: rounding, so the environment's thread count (``OMP_NUM_THREADS``) must not choose it.
NUM_THREADS = 2

_CKPT = "model.decoder.checkpoint_recollected=True"
#: name -> (config file, tiny overrides, extra overrides)
CASES: dict[str, tuple[str, list[str], list[str]]] = {
    "dab_detr": ("dab_detr_r50_50ep.py", TINY_DAB_DETR, []),
    "sqr_dab_detr": ("sqr_dab_detr_r50_50ep.py", TINY_DAB_DETR, []),
    "sqr_dab_detr_ckpt": ("sqr_dab_detr_r50_50ep.py", TINY_DAB_DETR, [_CKPT]),
    "sqr_dab_detr_dense": (
        "sqr_dab_detr_r50_50ep.py",
        TINY_DAB_DETR,
        ["model.recollection.mode=dense"],
    ),
    "deformable_detr": ("deformable_detr_r50_50ep.py", TINY_DEFORMABLE_DETR, []),
    "sqr_deformable_detr": ("sqr_deformable_detr_r50_50ep.py", TINY_DEFORMABLE_DETR, []),
    "sqr_deformable_detr_refine": (
        "sqr_deformable_detr_refine_r50_50ep.py",
        TINY_DEFORMABLE_DETR,
        [],
    ),
    "sqr_deformable_detr_refine_ckpt": (
        "sqr_deformable_detr_refine_r50_50ep.py",
        TINY_DEFORMABLE_DETR,
        [_CKPT],
    ),
    "sqr_deformable_detr_two_stage": (
        "sqr_deformable_detr_two_stage_r50_50ep.py",
        TINY_DEFORMABLE_DETR,
        [],
    ),
    "adamixer": ("adamixer_r50_1x.py", TINY_ADAMIXER, []),
    "sqr_adamixer": ("sqr_adamixer_r50_1x.py", TINY_ADAMIXER, []),
    "sqr_adamixer_ckpt": ("sqr_adamixer_r50_1x.py", TINY_ADAMIXER, [_CKPT]),
}


def _batch() -> list[dict]:
    return detection_batch([(64, 80), (72, 56)], [TWO_OBJECTS, ONE_OBJECT])


def machine() -> dict[str, str]:
    """What, besides the code, decides the bits of a fingerprint: torch and the CPU's vector
    instruction set."""
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _digest(tensor: torch.Tensor) -> list:
    """``[SHA-256 of the bytes, sum, Euclidean norm]`` of ``tensor``."""
    tensor = tensor.detach().contiguous().cpu()
    return [
        hashlib.sha256(tensor.numpy().tobytes()).hexdigest(),
        float(tensor.double().sum()),
        float(tensor.double().norm()),
    ]


def fingerprint(name: str) -> dict:
    """The losses, gradients and eval outputs of case ``name`` (see the module docstring),
    computed with :data:`NUM_THREADS` threads (the caller's count is restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(NUM_THREADS)
    try:
        return _fingerprint(name)
    finally:
        torch.set_num_threads(threads)


def _fingerprint(name: str) -> dict:
    config, tiny, extra = CASES[name]
    model = build_detector(CONFIGS / config, [*tiny, *extra])
    torch.manual_seed(2)  # dropout
    losses = model.train()(_batch())
    sum(losses.values()).backward()
    grads = {n: _digest(p.grad) for n, p in model.named_parameters() if p.grad is not None}
    with torch.no_grad():
        outputs = model.eval()(_batch())
    return {
        "losses": {k: v.item().hex() for k, v in losses.items()},
        "grads": grads,
        "outputs": [{k: _digest(v) for k, v in out.items()} for out in outputs],
    }


def main() -> None:
    REFERENCE.parent.mkdir(exist_ok=True)
    data = {"machine": machine(), "cases": {name: fingerprint(name) for name in CASES}}
    REFERENCE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(CASES)} cases to {REFERENCE}")


if __name__ == "__main__":
    main()
