"""Overrides that shrink the real model configs to test size (same code paths, tiny widths)."""

TINY_DAB_DETR = [
    "model.backbone.depth=18",
    "model.backbone.norm=BN",
    "model.backbone.freeze_at=0",
    "model.in_channels=512",
    "model.embed_dim=32",
    "model.position_embedding.num_feats=16",
    "model.encoder.num_layers=2",
    "model.encoder.num_heads=4",
    "model.encoder.feedforward_dim=64",
    "model.decoder.num_heads=4",
    "model.decoder.feedforward_dim=64",
    "model.num_queries=10",
    "model.select_box_nums_for_evaluation=10",
    "model.num_classes=5",
]
