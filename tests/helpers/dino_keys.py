"""The key set of detrex's DINO R50 4-scale checkpoints (``dino_r50_4scale_12ep_49_2AP.pth``),
written out from detrex's modules at e244e6c (``projects/dino/modeling``: ``DINO``,
``DINOTransformer`` and its encoder and decoder; ``BaseTransformerLayer``, ``FFN``,
``MultiheadAttention``, ``MultiScaleDeformableAttention``, ``ChannelMapper``/``ConvNormAct``;
detectron2's ResNet), not from the converter."""

from __future__ import annotations

from collections.abc import Callable

import torch

from helpers.deformable_keys import D, linear, msda, norm

FFN_DIM, QUERIES, CLASSES, LAYERS = 2048, 900, 80, 6
NORM = ("weight", "bias", "running_mean", "running_var")  # detectron2 FrozenBN buffers


def d2_r50(make: Callable[..., torch.Tensor]) -> dict[str, torch.Tensor]:
    """detectron2 ResNet-50 (stride in the 3x3, FrozenBN) under ``backbone.``."""
    state = {"backbone.stem.conv1.weight": make(64, 3, 7, 7)}
    state.update({f"backbone.stem.conv1.norm.{f}": make(64) for f in NORM})
    in_ch = 64
    for k, blocks in {2: 3, 3: 4, 4: 6, 5: 3}.items():
        width = 64 * 2 ** (k - 2)
        for j in range(blocks):
            block, block_in = f"backbone.res{k}.{j}", in_ch if j == 0 else 4 * width
            shapes = {
                1: (width, block_in, 1, 1),
                2: (width, width, 3, 3),
                3: (4 * width, width, 1, 1),
            }
            for n, shape in shapes.items():
                state[f"{block}.conv{n}.weight"] = make(*shape)
                state.update({f"{block}.conv{n}.norm.{f}": make(shape[0]) for f in NORM})
            if j == 0:
                state[f"{block}.shortcut.weight"] = make(4 * width, block_in, 1, 1)
                state.update({f"{block}.shortcut.norm.{f}": make(4 * width) for f in NORM})
        in_ch = 4 * width
    return state


def ffn(make, layer: str) -> dict:
    # FFN layers = Sequential(Sequential(Linear, ReLU, Dropout), Linear, Dropout).
    return {
        **linear(make, f"{layer}.ffns.0.layers.0.0", FFN_DIM, D),
        **linear(make, f"{layer}.ffns.0.layers.1", D, FFN_DIM),
    }


def detrex_dino_state(make: Callable[..., torch.Tensor]) -> dict[str, torch.Tensor]:
    """detrex DINO R50 4-scale: 900 queries, 80 classes, 6 + 6 layers, 4 levels."""
    state = d2_r50(make)
    # ChannelMapper(kernel_size=1, num_outs=4, GroupNorm): ConvNormAct ``conv`` (with bias) +
    # ``norm``; the extra level is a 3x3 stride-2 conv on res5.
    for name, c_in, k in [*((f"convs.{i}", c, 1) for i, c in enumerate((512, 1024, 2048)))] + [
        ("extra_convs.0", 2048, 3)
    ]:
        state[f"neck.{name}.conv.weight"] = make(D, c_in, k, k)
        state[f"neck.{name}.conv.bias"] = make(D)
        state.update(norm(make, f"neck.{name}.norm"))
    t = "transformer"
    state[f"{t}.level_embeds"] = make(4, D)
    state[f"{t}.tgt_embed.weight"] = make(QUERIES, D)
    state.update(linear(make, f"{t}.enc_output", D, D))
    state.update(norm(make, f"{t}.enc_output_norm"))
    for i in range(LAYERS):  # post_norm=False: no encoder post_norm_layer
        enc = f"{t}.encoder.layers.{i}"
        state.update(msda(make, f"{enc}.attentions.0"))
        state.update(ffn(make, enc))
        for n in range(2):
            state.update(norm(make, f"{enc}.norms.{n}"))
        dec = f"{t}.decoder.layers.{i}"
        state[f"{dec}.attentions.0.attn.in_proj_weight"] = make(3 * D, D)
        state[f"{dec}.attentions.0.attn.in_proj_bias"] = make(3 * D)
        state.update(linear(make, f"{dec}.attentions.0.attn.out_proj", D, D))
        state.update(msda(make, f"{dec}.attentions.1"))
        state.update(ffn(make, dec))
        for n in range(3):
            state.update(norm(make, f"{dec}.norms.{n}"))
    state.update(linear(make, f"{t}.decoder.ref_point_head.layers.0", D, 2 * D))
    state.update(linear(make, f"{t}.decoder.ref_point_head.layers.1", D, D))
    state.update(norm(make, f"{t}.decoder.norm"))
    # 7 deep-copied heads: one per decoder layer and the encoder proposals'; the decoder holds
    # the same ModuleLists, so state_dict() lists every head twice.
    heads = {}
    for k in range(LAYERS + 1):
        heads.update(linear(make, f"class_embed.{k}", CLASSES, D))
        for n, out_f in enumerate((D, D, 4)):
            heads.update(linear(make, f"bbox_embed.{k}.layers.{n}", out_f, D))
    state.update(heads)
    state.update({f"{t}.decoder.{name}": value.clone() for name, value in heads.items()})
    state["label_enc.weight"] = make(CLASSES, D)
    return state
