# The stand-in config with BatchNorm in the model: buffers that a training forward pass changes.
from helpers.standin_bn import BatchNormStandIn

from sqr.config import LazyCall as L

from .standin_synthetic import dataloader, lr_multiplier, optimizer, train

model = L(BatchNormStandIn)(num_classes=4, dropout=0.1)

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]
