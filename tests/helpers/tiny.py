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

# Deformable-DETR (all three variants): ResNet-18 C3-C5 (128/256/512 channels), 32 channels,
# 2 encoder layers, 6 decoder layers (the SQR stages), 10 queries.
TINY_DEFORMABLE_DETR = [
    "model.backbone.depth=18",
    "model.backbone.norm=BN",
    "model.backbone.freeze_at=0",
    "model.neck.in_channels=[128, 256, 512]",
    "model.neck.num_groups=8",
    "model.embed_dim=32",
    "model.position_embedding.num_feats=16",
    "model.encoder.num_layers=2",
    "model.encoder.num_heads=4",
    "model.encoder.num_points=2",
    "model.encoder.feedforward_dim=64",
    "model.decoder.num_heads=4",
    "model.decoder.num_points=2",
    "model.decoder.feedforward_dim=64",
    "model.num_queries=10",
    "model.select_box_nums_for_evaluation=10",
    "model.num_classes=5",
]

# AdaMixer (all recipes): ResNet-18 C2-C5 (64..512 channels), 32 channels, 2 sampling groups of
# 4 points mixed to 8, 10 queries; the stage count stays the recipe's (the SQR depth).
TINY_ADAMIXER = [
    "model.backbone.depth=18",
    "model.backbone.norm=BN",
    "model.backbone.freeze_at=0",
    "model.neck.in_channels=[64, 128, 256, 512]",
    "model.neck.num_groups=8",
    "model.embed_dim=32",
    "model.decoder.feat_channels=32",
    "model.decoder.num_heads=4",
    "model.decoder.feedforward_dim=64",
    "model.decoder.num_sampling_groups=2",
    "model.decoder.in_points=4",
    "model.decoder.out_points=8",
    "model.num_queries=10",
    "model.num_classes=5",
]

# DINO: the Deformable-DETR sizes (ResNet-18 C3-C5, 32 channels, 2 encoder layers, 6 decoder
# layers), 10 queries, and 4 denoising queries per copy kind (2 groups with two targets).
TINY_DINO = [
    "model.backbone.depth=18",
    "model.backbone.norm=BN",
    "model.backbone.freeze_at=0",
    "model.neck.in_channels=[128, 256, 512]",
    "model.neck.num_groups=8",
    "model.embed_dim=32",
    "model.position_embedding.num_feats=16",
    "model.encoder.num_layers=2",
    "model.encoder.num_heads=4",
    "model.encoder.num_points=2",
    "model.encoder.feedforward_dim=64",
    "model.decoder.num_heads=4",
    "model.decoder.num_points=2",
    "model.decoder.feedforward_dim=64",
    "model.denoising.num_denoising=4",
    "model.num_queries=10",
    "model.select_box_nums_for_evaluation=10",
    "model.num_classes=5",
]
