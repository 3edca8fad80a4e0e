"""The key set of official RT-DETRv2 checkpoints (lyuwenyu/RT-DETR ``rtdetrv2_pytorch`` at
068dfde), written out from its modules (``PResNet`` with ``ConvNormLayer``/``BasicBlock``/
``BottleNeck``, ``HybridEncoder`` with ``CSPRepLayer``/``RepVggBlock``/
``TransformerEncoderLayer``, ``RTDETRTransformerv2`` with ``MSDeformableAttention``), not from
the converter. Names and shapes only: values come from a ``make(*shape)`` callable."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Make = Callable[..., torch.Tensor]

# depth -> (blocks per stage, expansion): PResNet's ResNet table.
PRESNET_BLOCKS = {
    18: ((2, 2, 2, 2), 1),
    34: ((3, 4, 6, 3), 1),
    50: ((3, 4, 6, 3), 4),
    101: ((3, 4, 23, 3), 4),
}
_BN = ("weight", "bias", "running_mean", "running_var")


def official_presnet_shapes(depth: int, batch_norm: bool) -> dict[str, tuple[int, ...]]:
    """The official PResNet's state_dict names and shapes (width 64). ``batch_norm``: its norms
    are BatchNorm2d (with ``num_batches_tracked``), else its FrozenBatchNorm2d."""
    counts, expansion = PRESNET_BLOCKS[depth]
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_norm(prefix: str, c_in: int, c_out: int, k: int) -> None:
        shapes[f"{prefix}.conv.weight"] = (c_out, c_in, k, k)
        shapes.update({f"{prefix}.norm.{f}": (c_out,) for f in _BN})
        if batch_norm:
            shapes[f"{prefix}.norm.num_batches_tracked"] = ()

    for n, (c_in, c_out) in enumerate([(3, 32), (32, 32), (32, 64)], start=1):
        conv_norm(f"conv1.conv1_{n}", c_in, c_out, 3)
    c_in = 64
    for i, count in enumerate(counts):
        width = 64 * 2**i
        for j in range(count):
            block = f"res_layers.{i}.blocks.{j}"
            c_out = width * expansion
            if j == 0:
                conv_norm(f"{block}.short" + (".conv" if i > 0 else ""), c_in, c_out, 1)
            if expansion == 1:
                conv_norm(f"{block}.branch2a", c_in, width, 3)
                conv_norm(f"{block}.branch2b", width, width, 3)
            else:
                conv_norm(f"{block}.branch2a", c_in, width, 1)
                conv_norm(f"{block}.branch2b", width, width, 3)
                conv_norm(f"{block}.branch2c", width, c_out, 1)
            c_in = c_out
    return shapes


@dataclass(frozen=True)
class OfficialRTDETRv2:
    """The official hyper-parameters that decide the key set (its yml names)."""

    depth: int = 18
    freeze_norm: bool = False
    in_channels: Sequence[int] = (128, 256, 512)
    hidden_dim: int = 256
    encoder_hidden_dim: int | None = None  # HybridEncoder's hidden_dim (None: hidden_dim)
    expansion: float = 0.5
    depth_mult: float = 1.0
    encoder_ffn: int = 1024
    num_layers: int = 3
    num_points: Sequence[int] = (4, 4, 4)
    decoder_ffn: int = 1024
    nhead: int = 8
    num_classes: int = 80
    learn_query_content: bool = False
    eval_spatial_size: int | None = 640
    feat_strides: Sequence[int] = (8, 16, 32)


def _conv_norm(state: dict, make: Make, prefix: str, c_in: int, c_out: int, k: int) -> None:
    """A ConvNormLayer (Conv2d without bias, BatchNorm2d)."""
    state[f"{prefix}.conv.weight"] = make(c_out, c_in, k, k)
    state.update({f"{prefix}.norm.{f}": make(c_out) for f in _BN})
    state[f"{prefix}.norm.num_batches_tracked"] = torch.tensor(0)


def _linear(state: dict, make: Make, prefix: str, c_in: int, c_out: int) -> None:
    state[f"{prefix}.weight"], state[f"{prefix}.bias"] = make(c_out, c_in), make(c_out)


def _layer_norm(state: dict, make: Make, prefix: str, channels: int) -> None:
    state[f"{prefix}.weight"], state[f"{prefix}.bias"] = make(channels), make(channels)


def _attention(state: dict, make: Make, prefix: str, channels: int) -> None:
    """nn.MultiheadAttention's parameters."""
    state[f"{prefix}.in_proj_weight"] = make(3 * channels, channels)
    state[f"{prefix}.in_proj_bias"] = make(3 * channels)
    _linear(state, make, f"{prefix}.out_proj", channels, channels)


def _mlp(state: dict, make: Make, prefix: str, dims: Sequence[int]) -> None:
    for k, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        _linear(state, make, f"{prefix}.layers.{k}", c_in, c_out)


def official_rtdetrv2_state(make: Make, arch: OfficialRTDETRv2) -> dict[str, torch.Tensor]:
    """An official RT-DETRv2 ``model.state_dict()``: ``backbone.``, ``encoder.``, ``decoder.``.

    The denoising embedding's padding row (``padding_idx = num_classes``) is zero, as training
    leaves it.
    """
    state: dict[str, torch.Tensor] = {}
    backbone = official_presnet_shapes(arch.depth, batch_norm=not arch.freeze_norm)
    for key, shape in backbone.items():
        state[f"backbone.{key}"] = make(*shape) if shape else torch.tensor(0)
    h = arch.encoder_hidden_dim or arch.hidden_dim
    # HybridEncoder: v2 input projections, one AIFI layer on the last level, FPN and PAN.
    for level, c_in in enumerate(arch.in_channels):
        _conv_norm(state, make, f"encoder.input_proj.{level}", c_in, h, 1)
    aifi = "encoder.encoder.0.layers.0"
    _attention(state, make, f"{aifi}.self_attn", h)
    _linear(state, make, f"{aifi}.linear1", h, arch.encoder_ffn)
    _linear(state, make, f"{aifi}.linear2", arch.encoder_ffn, h)
    for n in (1, 2):
        _layer_norm(state, make, f"{aifi}.norm{n}", h)
    hidden = int(h * arch.expansion)
    for i in range(len(arch.in_channels) - 1):
        _conv_norm(state, make, f"encoder.lateral_convs.{i}", h, h, 1)
        _conv_norm(state, make, f"encoder.downsample_convs.{i}", h, h, 3)
        for path in ("fpn_blocks", "pan_blocks"):
            block = f"encoder.{path}.{i}"
            _conv_norm(state, make, f"{block}.conv1", 2 * h, hidden, 1)
            _conv_norm(state, make, f"{block}.conv2", 2 * h, hidden, 1)
            for b in range(round(3 * arch.depth_mult)):
                _conv_norm(state, make, f"{block}.bottlenecks.{b}.conv1", hidden, hidden, 3)
                _conv_norm(state, make, f"{block}.bottlenecks.{b}.conv2", hidden, hidden, 1)
            if hidden != h:  # conv3 is an Identity otherwise
                _conv_norm(state, make, f"{block}.conv3", hidden, h, 1)
    # RTDETRTransformerv2, its input projections from the encoder's channels (feat_channels).
    levels, points = len(arch.num_points), sum(arch.num_points)
    for level in range(levels):
        _conv_norm(state, make, f"decoder.input_proj.{level}", h, arch.hidden_dim, 1)
    h = arch.hidden_dim
    for i in range(arch.num_layers):
        layer = f"decoder.decoder.layers.{i}"
        _attention(state, make, f"{layer}.self_attn", h)
        cross = f"{layer}.cross_attn"
        _linear(state, make, f"{cross}.sampling_offsets", h, arch.nhead * points * 2)
        _linear(state, make, f"{cross}.attention_weights", h, arch.nhead * points)
        _linear(state, make, f"{cross}.value_proj", h, h)
        _linear(state, make, f"{cross}.output_proj", h, h)
        state[f"{cross}.num_points_scale"] = torch.tensor(
            [1 / n for n in arch.num_points for _ in range(n)]
        )
        _linear(state, make, f"{layer}.linear1", h, arch.decoder_ffn)
        _linear(state, make, f"{layer}.linear2", arch.decoder_ffn, h)
        for n in (1, 2, 3):
            _layer_norm(state, make, f"{layer}.norm{n}", h)
    embed = make(arch.num_classes + 1, h)
    embed[-1] = 0
    state["decoder.denoising_class_embed.weight"] = embed
    if arch.learn_query_content:
        state["decoder.tgt_embed.weight"] = make(300, h)
    _mlp(state, make, "decoder.query_pos_head", (4, 2 * h, h))
    _linear(state, make, "decoder.enc_output.proj", h, h)
    _layer_norm(state, make, "decoder.enc_output.norm", h)
    _linear(state, make, "decoder.enc_score_head", h, arch.num_classes)
    _mlp(state, make, "decoder.enc_bbox_head", (h, h, h, 4))
    for i in range(arch.num_layers):
        _linear(state, make, f"decoder.dec_score_head.{i}", h, arch.num_classes)
        _mlp(state, make, f"decoder.dec_bbox_head.{i}", (h, h, h, 4))
    if arch.eval_spatial_size:
        tokens = sum((arch.eval_spatial_size // s) ** 2 for s in arch.feat_strides)
        state["decoder.anchors"] = make(1, tokens, 4)
        state["decoder.valid_mask"] = torch.ones(1, tokens, 1, dtype=torch.bool)
    return state
