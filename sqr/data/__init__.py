"""Datasets, augmentation and data loading for sqr."""

from sqr.data.batching import batch_images
from sqr.data.build import (
    MapDataset,
    build_detection_test_loader,
    build_detection_train_loader,
    trivial_batch_collator,
    worker_init_fn,
)
from sqr.data.catalog import (
    datasets_root,
    get_metadata,
    list_datasets,
    load_dataset,
    register_coco_instances,
)
from sqr.data.coco import Metadata, load_coco_json
from sqr.data.mapper import DetrDatasetMapper, ImageReadError, ImageSizeMismatchError
from sqr.data.samplers import InferenceSampler, TrainingBatchSampler
from sqr.data.synthetic import ensure_synthetic_shapes, generate_synthetic_shapes
from sqr.data.transforms import (
    RandomSizeCrop,
    ResizeShortestEdge,
    detr_test_augmentation,
    detr_train_augmentation,
)

__all__ = [
    "DetrDatasetMapper",
    "ImageReadError",
    "ImageSizeMismatchError",
    "InferenceSampler",
    "MapDataset",
    "Metadata",
    "RandomSizeCrop",
    "ResizeShortestEdge",
    "TrainingBatchSampler",
    "batch_images",
    "build_detection_test_loader",
    "build_detection_train_loader",
    "datasets_root",
    "detr_test_augmentation",
    "detr_train_augmentation",
    "ensure_synthetic_shapes",
    "generate_synthetic_shapes",
    "get_metadata",
    "list_datasets",
    "load_coco_json",
    "load_dataset",
    "register_coco_instances",
    "trivial_batch_collator",
    "worker_init_fn",
]
