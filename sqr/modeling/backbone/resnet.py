"""ResNet backbone with torchvision module names and detectron2 freezing semantics.

The body is torchvision's own ``ResNet`` (v1.5: the stride sits on the 3x3 convolution, i.e.
detectron2's ``STRIDE_IN_1X1=False``, which is what the reference DAB-DETR uses). Its modules are
exposed under torchvision's names (``conv1, bn1, relu, maxpool, layer1..layer4``), so a torchvision
state_dict loads directly and detectron2/detrex checkpoints load after
:mod:`sqr.modeling.converters` renames them. Stages are called ``res2..res5`` as in detectron2:
``res{k}`` is torchvision's ``layer{k-1}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.resnet import ResNet as TorchvisionResNet
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["STAGE_NAMES", "FrozenStatsBatchNorm2d", "ResNet"]

#: detectron2 names of the four residual stages, lowest resolution last.
STAGE_NAMES = ("res2", "res3", "res4", "res5")
_STAGE_STRIDES = (4, 8, 16, 32)

# depth -> (block type, blocks per stage); the standard ResNet table.
_ARCH: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
_NORMS = ("FrozenBN", "FrozenStatsBN", "BN")


def _frozen_bn(num_features: int) -> FrozenBatchNorm2d:
    # detectron2's FrozenBatchNorm2d uses eps=1e-5; pin it rather than rely on a default.
    return FrozenBatchNorm2d(num_features, eps=1e-5)


class FrozenStatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with its running statistics but trains its affine
    parameters: mmdet's ``norm_eval=True`` with ``requires_grad=True`` (AdaMixer's backbone).

    The statistics stay frozen in training mode too (mmdet switches the layers to eval in
    ``train()``). Frozen statistics make ``num_batches_tracked`` meaningless, so the layer has
    none, like ``FrozenBatchNorm2d``, and ignores one found in a checkpoint.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps)
        self.register_buffer("num_batches_tracked", None)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        # nn.BatchNorm2d would put the counter back into an unversioned state_dict.
        nn.Module._load_from_state_dict(self, state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


def _freeze_module(module: nn.Module) -> nn.Module:
    """Stop gradients into ``module`` and replace its BatchNorm layers by FrozenBatchNorm2d.

    Turning off ``requires_grad`` alone would leave ``nn.BatchNorm2d`` updating its running
    statistics in training mode, so (like detectron2's ``freeze()``) the layers are converted.

    Returns:
        The module with the replacements made (a new object only if ``module`` itself is a BN).
    """
    if isinstance(module, nn.BatchNorm2d):
        frozen = _frozen_bn(module.num_features)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.track_running_stats:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new_child = _freeze_module(child)
        if new_child is not child:
            setattr(module, name, new_child)
    for param in module.parameters(recurse=False):
        param.requires_grad_(False)
    return module


class ResNet(nn.Module):
    """A torchvision ResNet body returning a dict of stage outputs.

    Only the stages up to the highest one in ``out_features`` are kept: torchvision always builds
    all four, and the unused ones are dropped before they can hold parameters or appear in the
    state_dict. There is no ``avgpool``/``fc``.

    Args:
        depth: 18, 34, 50, 101 or 152.
        out_features: Stages to return, among ``"res2".."res5"``.
        freeze_at: detectron2 semantics. 0 freezes nothing, 1 the stem (``conv1``/``bn1``),
            2 the stem and ``res2`` (``layer1``), ..., 5 everything. Frozen parameters get
            ``requires_grad=False`` and, with ``norm="BN"``, frozen BatchNorm layers become
            ``FrozenBatchNorm2d`` (their ``num_batches_tracked`` buffer then disappears).
        norm: ``"FrozenBN"`` (``torchvision.ops.FrozenBatchNorm2d``, eps 1e-5; the usual choice
            for detection with small per-GPU batches), ``"FrozenStatsBN"``
            (:class:`FrozenStatsBatchNorm2d`: frozen statistics, trained affine parameters, as
            mmdet's ``norm_eval=True``) or ``"BN"`` (``nn.BatchNorm2d``).
    """

    def __init__(
        self,
        depth: int = 50,
        out_features: Sequence[str] = ("res5",),
        freeze_at: int = 1,
        norm: str = "FrozenBN",
    ) -> None:
        super().__init__()
        if depth not in _ARCH:
            raise ValueError(f"ResNet depth={depth!r} is not supported; use one of {sorted(_ARCH)}")
        if isinstance(out_features, str):
            # A bare "res5" would otherwise be iterated character by character.
            raise TypeError(
                f"ResNet out_features must be a sequence of names, got {out_features!r}"
            )
        out_features = tuple(out_features)
        if not out_features:
            raise ValueError(f"ResNet out_features is empty; choose from {STAGE_NAMES}")
        for name in out_features:
            if name not in STAGE_NAMES:
                raise ValueError(
                    f"ResNet out_features contains {name!r}; valid names are {STAGE_NAMES}"
                )
        if len(set(out_features)) != len(out_features):
            raise ValueError(f"ResNet out_features has duplicates: {out_features}")
        if not isinstance(freeze_at, int) or not 0 <= freeze_at <= 5:
            raise ValueError(f"ResNet freeze_at={freeze_at!r} must be an int in [0, 5]")
        if norm not in _NORMS:
            raise ValueError(f"ResNet norm={norm!r} is not supported; use one of {_NORMS}")

        block, layers = _ARCH[depth]
        norm_layer = {
            "FrozenBN": _frozen_bn,
            "FrozenStatsBN": FrozenStatsBatchNorm2d,
            "BN": nn.BatchNorm2d,
        }[norm]
        body = TorchvisionResNet(block, list(layers), norm_layer=norm_layer)

        self.depth = depth
        self.norm = norm
        self.freeze_at = freeze_at
        # Kept in canonical order so outputs come out from fine to coarse whatever the input order.
        self.out_features = tuple(n for n in STAGE_NAMES if n in out_features)
        self.num_stages = max(STAGE_NAMES.index(n) for n in out_features) + 1

        self.conv1 = body.conv1
        self.bn1 = body.bn1
        self.relu = body.relu
        self.maxpool = body.maxpool
        for i in range(1, self.num_stages + 1):
            self.add_module(f"layer{i}", getattr(body, f"layer{i}"))

        self._channels = {name: 64 * 2**i * block.expansion for i, name in enumerate(STAGE_NAMES)}
        self._freeze(freeze_at)

    def _freeze(self, freeze_at: int) -> None:
        if freeze_at >= 1:
            self.conv1 = _freeze_module(self.conv1)
            self.bn1 = _freeze_module(self.bn1)
        # freeze_at=k freezes res2..res{k}, i.e. layer1..layer{k-1}, as far as they were built.
        for i in range(1, min(freeze_at - 1, self.num_stages) + 1):
            _freeze_module(getattr(self, f"layer{i}"))

    @property
    def output_shape(self) -> dict[str, tuple[int, int]]:
        """Channels and stride of each returned stage.

        Returns:
            ``{name: (channels, stride)}`` for the names in ``out_features``, e.g.
            ``{"res5": (2048, 32)}`` for ResNet-50.
        """
        return {
            name: (self._channels[name], _STAGE_STRIDES[STAGE_NAMES.index(name)])
            for name in self.out_features
        }

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Run the body.

        Args:
            x: Images, ``[B, 3, H, W]``, already normalised.

        Returns:
            ``{name: Tensor[B, C, ceil(H / stride), ceil(W / stride)]}`` for ``out_features``.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ResNet expects input of shape [B, 3, H, W], got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outputs: dict[str, Tensor] = {}
        for i, name in enumerate(STAGE_NAMES[: self.num_stages]):
            x = getattr(self, f"layer{i + 1}")(x)
            if name in self.out_features:
                outputs[name] = x
        return outputs

    def extra_repr(self) -> str:
        return (
            f"depth={self.depth}, out_features={self.out_features}, "
            f"freeze_at={self.freeze_at}, norm={self.norm!r}"
        )
