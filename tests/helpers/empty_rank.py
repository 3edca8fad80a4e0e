"""Training steps of every detector where one rank's batch has no target, for the two-process
test (``tests/engine/test_distributed_empty_rank.py``) and its single-process oracle."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from helpers.detectors import NO_OBJECT, TWO_OBJECTS, build_detector, detection_batch
from helpers.recollection_reference import CONFIGS
from sqr.config import LazyConfig
from sqr.modeling import table

# Per-image features must not depend on the batch: frozen BN statistics, no dropout (each rank
# draws its own masks), and both images of one size (no padding that only the batch adds).
# (PResNet backbones freeze their norms with a flag of their own).
_FROZEN = {"norm": "model.backbone.norm=FrozenBN", "freeze_norm": "model.backbone.freeze_norm=True"}

#: name -> (config, overrides): every detector of the table, SQR and baseline.
CASES: dict[str, tuple[str, list[str]]] = {
    f"{entry.name} {variant}": (entry.config, [*entry.tiny, *entry.no_dropout, *extra])
    for entry in table.DETECTORS
    for variant, extra in (("sqr", ()), ("baseline", (table.BASELINE,)))
}
STEPS = 2


def images() -> list[dict]:
    """Image 0 without a target, image 1 with two; one size, so batching adds no padding."""
    return detection_batch([(64, 80), (64, 80)], [NO_OBJECT, TWO_OBJECTS])


def build(name: str) -> nn.Module:
    config, overrides = CASES[name]
    backbone = LazyConfig.load(str(CONFIGS / config)).model.backbone
    frozen = [override for key, override in _FROZEN.items() if key in backbone]
    return build_detector(CONFIGS / config, [*overrides, *frozen]).train()


def train_steps(model: nn.Module, inputs: list[dict]) -> list[dict[str, torch.Tensor]]:
    """``STEPS`` SGD steps on ``inputs``; the gradients of every step, by parameter name. In a
    process group the gradients are averaged over the ranks first, as DDP averages them."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD(params.values(), lr=1e-3)
    grads = []
    for step in range(STEPS):
        torch.manual_seed(10 + step)  # denoising noise: the same draws on rank 1 and the oracle
        optimizer.zero_grad()
        sum(model(inputs).values()).backward()
        missing = [n for n, p in params.items() if p.grad is None]
        assert not missing, f"no gradient for {missing}"  # DDP would stop on these
        if dist.is_initialized():
            # DDP's averaging, without DDP: its constructor crashes under
            # TORCH_DISTRIBUTED_DEBUG=DETAIL on gloo (torch 2.14).
            flat = torch.cat([p.grad.flatten() for p in params.values()])
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            sizes = [p.numel() for p in params.values()]
            for p, g in zip(params.values(), flat.split(sizes), strict=True):
                p.grad.copy_(g.view_as(p.grad))
        grads.append({n: p.grad.clone() for n, p in params.items()})
        optimizer.step()
    return grads


def train_every_detector_on_own_image(out_dir: str) -> None:
    """Rank r trains each detector on image r; rank 0's has no target. Writes every step's
    averaged gradients to ``{out_dir}/{name}_rank{r}.pt``."""
    torch.set_num_threads(1)
    rank = dist.get_rank()
    for name in CASES:
        grads = train_steps(build(name), [images()[rank]])
        torch.save(grads, Path(out_dir) / f"{name}_rank{rank}.pt")
