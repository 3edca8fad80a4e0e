"""PResNet-vd: the ResNet-D backbone of RT-DETR and RT-DETRv2.

A ResNet in the "vd" form of Bag of Tricks (He et al., 2019), as RT-DETRv2 builds it
(lyuwenyu/RT-DETR, ``rtdetrv2_pytorch/src/nn/backbone/presnet.py`` at 068dfde; this is a
re-implementation, not a copy):

* the stem is three 3x3 convolutions (stride 2, 1, 1; widths ``width / 2, width / 2, width``)
  instead of one 7x7, then a 3x3 stride-2 max-pool;
* the first block of every stage has a projection shortcut (also in ``res2``, where the channels
  of a BasicBlock already match); in the stride-2 stages it is a 2x2 average pool
  (``ceil_mode=True``) followed by a stride-1 1x1 convolution, so the shortcut sees every pixel;
* Bottleneck blocks put the stride on the 3x3 convolution.

Every convolution is bias-free and followed by a BatchNorm (``FrozenBatchNorm2d`` with
``freeze_norm``). Parameter names are ours; :mod:`sqr.modeling.converters.rtdetr` maps the
official ones. Outputs are named ``res2..res5`` as in :class:`~sqr.modeling.backbone.ResNet`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from .resnet import STAGE_NAMES

__all__ = ["BasicBlock", "Bottleneck", "ConvNormAct", "PResNet", "ProjectionShortcut"]

_STAGE_STRIDES = (4, 8, 16, 32)
_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
}

NormLayer = Callable[[int], nn.Module]


def activation_layer(name: str | None) -> nn.Module:
    """``nn.Identity`` for ``None``, else the named activation ("relu", "silu" or "gelu")."""
    if name is None:
        return nn.Identity()
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported; use one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


class ConvNormAct(nn.Module):
    """A bias-free convolution with "same" padding, a norm and an optional activation.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel; the padding is ``(kernel_size - 1) // 2``.
        stride: convolution stride.
        activation: name for :func:`activation_layer`, or ``None`` for none.
        norm_layer: builds the norm from the channel count.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        activation: str | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        padding = (kernel_size - 1) // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.norm = norm_layer(out_channels)
        self.act = activation_layer(activation)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W] -> [B, C_out, ceil(H / stride), ceil(W / stride)]``."""
        return self.act(self.norm(self.conv(x)))


class ProjectionShortcut(nn.Module):
    """The shortcut of a stage's first block: ``norm(conv1x1(pool(x)))``.

    With ``stride=2`` the pool is a 2x2 average pool with ``ceil_mode=True`` (ResNet-D), so the
    shortcut of an odd-sized map has ``ceil(H / 2)`` rows like the strided main branch; with
    ``stride=1`` there is no pool.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: 1 or 2.
        norm_layer: builds the norm from the channel count.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, norm_layer: NormLayer
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ProjectionShortcut stride must be 1 or 2, got {stride}")
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.norm = norm_layer(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W] -> [B, C_out, ceil(H / stride), ceil(W / stride)]``."""
        return self.norm(self.conv(self.pool(x)))


class BasicBlock(nn.Module):
    """``relu(conv2(conv1(x)) + shortcut(x))`` with two 3x3 ConvNorms (ResNet-18/34).

    Args:
        in_channels: input channels.
        width: output channels (``expansion`` is 1).
        stride: of ``conv1`` and of the shortcut.
        project: the block has a :class:`ProjectionShortcut` (first block of a stage); otherwise
            the shortcut is the identity, which needs ``stride=1`` and equal channels.
        norm_layer: builds the norms.
    """

    expansion = 1

    def __init__(
        self, in_channels: int, width: int, stride: int, project: bool, norm_layer: NormLayer
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        # The shortcut comes first as in the official block: same initialisation under a seed
        # and the same state_dict order.
        self.shortcut = _shortcut(in_channels, out_channels, stride, project, norm_layer)
        self.conv1 = ConvNormAct(in_channels, width, 3, stride, "relu", norm_layer)
        self.conv2 = ConvNormAct(width, out_channels, 3, 1, None, norm_layer)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W] -> [B, width, ceil(H / stride), ceil(W / stride)]``."""
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """``relu(conv3(conv2(conv1(x))) + shortcut(x))``: 1x1, 3x3 (strided), 1x1 to
    ``4 * width`` (ResNet-50/101).

    Args:
        in_channels: input channels.
        width: channels of the 1x1 and 3x3 convolutions; the output has ``4 * width``.
        stride: of ``conv2`` and of the shortcut.
        project: the block has a :class:`ProjectionShortcut` (first block of a stage).
        norm_layer: builds the norms.
    """

    expansion = 4

    def __init__(
        self, in_channels: int, width: int, stride: int, project: bool, norm_layer: NormLayer
    ) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = ConvNormAct(in_channels, width, 1, 1, "relu", norm_layer)
        self.conv2 = ConvNormAct(width, width, 3, stride, "relu", norm_layer)
        self.conv3 = ConvNormAct(width, out_channels, 1, 1, None, norm_layer)
        self.shortcut = _shortcut(in_channels, out_channels, stride, project, norm_layer)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W] -> [B, 4 * width, ceil(H / stride), ceil(W / stride)]``."""
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))


def _shortcut(
    in_channels: int, out_channels: int, stride: int, project: bool, norm_layer: NormLayer
) -> nn.Module:
    if project:
        return ProjectionShortcut(in_channels, out_channels, stride, norm_layer)
    if stride != 1 or in_channels != out_channels:
        raise ValueError(
            f"an identity shortcut needs stride 1 and equal channels, got stride={stride}, "
            f"{in_channels} -> {out_channels} channels"
        )
    return nn.Identity()


# depth -> (block type, blocks per stage), as in the official ``ResNet_cfg``.
_ARCH: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class PResNet(nn.Module):
    """ResNet-vd returning a dict of stage outputs, with RT-DETR's freezing options.

    Modules: ``stem`` (``conv1..conv3``, each a :class:`ConvNormAct`), then ``layer1..layer4``
    (``nn.Sequential`` of blocks), which produce ``res2..res5`` at strides 4, 8, 16, 32. All four
    stages are always built, as in the official model, so its checkpoints load whatever
    ``return_idx`` is.

    Args:
        depth: 18, 34, 50 or 101.
        return_idx: stages to return, 0-based (0 is ``res2``), strictly increasing; the
            official configs use ``(1, 2, 3)``.
        freeze_at: the official semantics (not :class:`ResNet`'s detectron2 ones): -1 freezes
            nothing, ``k >= 0`` the stem and the first ``k`` stages. Freezing sets
            ``requires_grad=False`` only; BatchNorm statistics still update in training unless
            ``freeze_norm``.
        freeze_norm: every norm is ``torchvision.ops.FrozenBatchNorm2d`` (eps 1e-5, statistics
            and affine terms are buffers), else ``nn.BatchNorm2d``.
        width: channels of the stem and of ``res2``'s 3x3 convolutions (64 in every official
            model; smaller only for tests). Stage ``i`` has ``width * 2**i``, times the block's
            expansion at its output.
    """

    def __init__(
        self,
        depth: int = 50,
        return_idx: Sequence[int] = (0, 1, 2, 3),
        freeze_at: int = -1,
        freeze_norm: bool = True,
        width: int = 64,
    ) -> None:
        super().__init__()
        if depth not in _ARCH:
            raise ValueError(
                f"PResNet depth={depth!r} is not supported; use one of {sorted(_ARCH)}"
            )
        return_idx = tuple(return_idx)
        if not return_idx or any(i not in range(4) for i in return_idx):
            raise ValueError(f"PResNet return_idx={return_idx} must be non-empty indices in 0..3")
        if list(return_idx) != sorted(set(return_idx)):
            raise ValueError(f"PResNet return_idx={return_idx} must be strictly increasing")
        if not isinstance(freeze_at, int) or not -1 <= freeze_at <= 4:
            raise ValueError(f"PResNet freeze_at={freeze_at!r} must be an int in [-1, 4]")
        if width < 2 or width % 2:
            raise ValueError(f"PResNet width={width!r} must be an even int >= 2")

        block, counts = _ARCH[depth]
        norm_layer: NormLayer = FrozenBatchNorm2d if freeze_norm else nn.BatchNorm2d
        self.depth = depth
        self.return_idx = return_idx
        self.freeze_at = freeze_at
        self.freeze_norm = freeze_norm
        self.out_features = tuple(STAGE_NAMES[i] for i in return_idx)

        self.stem = nn.Sequential()
        stem_widths = (3, width // 2, width // 2, width)
        for n, (c_in, c_out) in enumerate(zip(stem_widths[:-1], stem_widths[1:], strict=True)):
            stride = 2 if n == 0 else 1
            self.stem.add_module(
                f"conv{n + 1}", ConvNormAct(c_in, c_out, 3, stride, "relu", norm_layer)
            )
        in_channels = width
        self._channels: list[int] = []
        for i, count in enumerate(counts):
            stage_width = width * 2**i
            blocks = []
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(in_channels, stage_width, stride, j == 0, norm_layer))
                in_channels = stage_width * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self._channels.append(in_channels)

        if freeze_at >= 0:
            frozen = [self.stem] + [getattr(self, f"layer{i + 1}") for i in range(freeze_at)]
            for module in frozen:
                module.requires_grad_(False)

    @property
    def output_shape(self) -> dict[str, tuple[int, int]]:
        """Channels and stride of each returned stage.

        Returns:
            ``{name: (channels, stride)}`` for ``out_features``, e.g.
            ``{"res3": (512, 8), "res4": (1024, 16), "res5": (2048, 32)}`` for depth 50 and
            ``return_idx=(1, 2, 3)``.
        """
        return {STAGE_NAMES[i]: (self._channels[i], _STAGE_STRIDES[i]) for i in self.return_idx}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Run the body up to the last returned stage.

        Args:
            x: Images, ``[B, 3, H, W]``, already normalised.

        Returns:
            ``{name: Tensor[B, C, ceil(H / stride), ceil(W / stride)]}`` for ``out_features``
            (every stride-2 step rounds up, and nested ceilings compose).
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"PResNet expects input of shape [B, 3, H, W], got {tuple(x.shape)}")
        x = F.max_pool2d(self.stem(x), kernel_size=3, stride=2, padding=1)
        outputs: dict[str, Tensor] = {}
        for i in range(self.return_idx[-1] + 1):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in self.return_idx:
                outputs[STAGE_NAMES[i]] = x
        return outputs

    def extra_repr(self) -> str:
        return (
            f"depth={self.depth}, return_idx={self.return_idx}, freeze_at={self.freeze_at}, "
            f"freeze_norm={self.freeze_norm}"
        )
