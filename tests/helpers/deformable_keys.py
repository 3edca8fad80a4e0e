"""Synthesised key sets shared by the Deformable-DETR converter tests (mmdet and detrex name
the transformer's layers alike: mmcv's BaseTransformerLayer lists)."""

D, FFN_DIM = 256, 1024  # R50 recipe: embed dim, FFN hidden dim


def linear(make, name: str, out_f: int, in_f: int) -> dict:
    return {f"{name}.weight": make(out_f, in_f), f"{name}.bias": make(out_f)}


def norm(make, name: str, dim: int = D) -> dict:
    return {f"{name}.weight": make(dim), f"{name}.bias": make(dim)}


def msda(make, name: str) -> dict:
    # 8 heads x 4 levels x 4 points: 256 offsets (x, y) and 128 weights.
    return {
        **linear(make, f"{name}.sampling_offsets", 256, D),
        **linear(make, f"{name}.attention_weights", 128, D),
        **linear(make, f"{name}.value_proj", D, D),
        **linear(make, f"{name}.output_proj", D, D),
    }


def ffn(make, layer: str) -> dict:
    # FFN layers = Sequential(Sequential(Linear, ReLU, Dropout), Linear, Dropout).
    return {
        **linear(make, f"{layer}.ffns.0.layers.0.0", FFN_DIM, D),
        **linear(make, f"{layer}.ffns.0.layers.1", D, FFN_DIM),
    }
