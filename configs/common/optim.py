import torch

from sqr.config import LazyCall as L
from sqr.engine.optim import get_default_optimizer_params

# tools/train_net.py fills params.model with the built model.
AdamW = L(torch.optim.AdamW)(
    params=L(get_default_optimizer_params)(
        base_lr="${..lr}",
        weight_decay="${..weight_decay}",
        weight_decay_norm=0.0,
        lr_factors={"backbone": 0.1},
    ),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=1e-4,
)

SGD = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(
        base_lr="${..lr}",
        weight_decay="${..weight_decay}",
        weight_decay_norm=0.0,
    ),
    lr=0.02,
    momentum=0.9,
    weight_decay=1e-4,
)
