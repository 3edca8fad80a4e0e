"""The detectron2 adapter: its conversions both ways, its state_dict keys, and a few training
iterations plus a COCO evaluation through detectron2's own loaders, trainer and evaluator."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers.tiny import TINY_DAB_DETR

pytest.importorskip(
    "detectron2.structures", reason="detectron2 is not installed (it is not on PyPI)"
)
from detectron2.structures import Boxes, Instances  # noqa: E402

from sqr.config import LazyConfig, instantiate  # noqa: E402
from sqr.integrations.detectron2 import (  # noqa: E402
    Detectron2Adapter,
    instances_to_outputs,
    instances_to_targets,
    lr_factors_by_name,
    outputs_to_instances,
    targets_to_instances,
    to_rgb,
    to_sqr_inputs,
)

REPO = Path(__file__).resolve().parents[2]
NUM_SYNTHETIC_CLASSES = 4  # circle, square, triangle, cross


def tiny_dab_detr(num_classes: int = 5) -> torch.nn.Module:
    cfg = LazyConfig.load(str(REPO / "projects/sqr/configs/models/dab_detr_r50.py"))
    LazyConfig.apply_overrides(cfg, [*TINY_DAB_DETR, f"model.num_classes={num_classes}"])
    torch.manual_seed(0)
    return instantiate(cfg.model)


def test_to_rgb_reverses_bgr_and_keeps_rgb() -> None:
    bgr = torch.tensor([0, 1, 2], dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 2)
    assert to_rgb(bgr, "BGR")[:, 0, 0].tolist() == [2, 1, 0]
    assert to_rgb(bgr, "RGB") is bgr
    with pytest.raises(ValueError, match="'YUV-BT.601'"):
        to_rgb(bgr, "YUV-BT.601")
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        to_rgb(bgr[0], "RGB")


def test_ground_truth_converts_both_ways() -> None:
    instances = Instances(
        (20, 30),
        gt_boxes=Boxes(torch.tensor([[1.0, 2.0, 11.0, 12.0], [0.0, 0.0, 30.0, 20.0]])),
        gt_classes=torch.tensor([3, 0]),
    )
    targets = instances_to_targets(instances)
    assert targets["boxes"].tolist() == [[1.0, 2.0, 11.0, 12.0], [0.0, 0.0, 30.0, 20.0]]
    assert targets["labels"].tolist() == [3, 0]
    assert targets["labels"].dtype == torch.int64
    back = targets_to_instances(targets, (20, 30))
    assert back.image_size == (20, 30)
    assert torch.equal(back.gt_boxes.tensor, instances.gt_boxes.tensor)
    assert torch.equal(back.gt_classes, instances.gt_classes)
    with pytest.raises(ValueError, match="gt_classes"):
        instances_to_targets(Instances((20, 30), gt_boxes=instances.gt_boxes))


def test_predictions_convert_both_ways() -> None:
    output = {
        "boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]),
        "scores": torch.tensor([0.5]),
        "labels": torch.tensor([2]),
    }
    instances = outputs_to_instances(output, (8, 9))
    assert instances.image_size == (8, 9)
    assert instances.pred_boxes.tensor.tolist() == [[1.0, 2.0, 3.0, 4.0]]
    back = instances_to_outputs(instances)
    assert all(torch.equal(back[k], output[k]) for k in output)


def test_inputs_become_rgb_with_targets_and_own_size() -> None:
    image = torch.randint(0, 256, (3, 6, 7), dtype=torch.uint8)
    gt = Instances((6, 7), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0).long())
    x = {"image": image, "height": 60, "width": 70, "instances": gt}
    (converted,) = to_sqr_inputs([x], "BGR", training=True)
    assert torch.equal(converted["image"], image.flip(0))
    # The detector predicts in the input image's size; detector_postprocess rescales after.
    assert (converted["height"], converted["width"]) == (6, 7)
    assert converted["targets"]["boxes"].shape == (0, 4)
    assert "targets" not in to_sqr_inputs([x], "RGB", training=False)[0]
    with pytest.raises(ValueError, match="'instances'"):
        to_sqr_inputs([{"image": image}], "RGB", training=True)


def test_adapter_wraps_the_detector_and_keeps_its_state_dict_keys() -> None:
    detector = tiny_dab_detr()
    adapter = Detectron2Adapter(detector=detector, input_format="RGB")
    assert adapter.detector is detector
    assert list(adapter.state_dict()) == list(detector.state_dict())
    # An sqr checkpoint loads strictly into the adapter, and the adapter's into a bare detector.
    other = tiny_dab_detr()
    torch.nn.init.constant_(other.class_embed.weight, 0.25)
    adapter.load_state_dict(other.state_dict())
    assert torch.equal(detector.class_embed.weight, other.class_embed.weight)
    fresh = tiny_dab_detr()
    fresh.load_state_dict(adapter.state_dict())
    assert torch.equal(fresh.class_embed.weight, other.class_embed.weight)
    # Keys with the submodule prefix load too (e.g. from a plain nn.Module.state_dict elsewhere).
    adapter.load_state_dict({f"detector.{k}": v for k, v in other.state_dict().items()})
    # Nested (as under DDP's "module."), only the adapter's own prefix goes.
    nested = torch.nn.Sequential(adapter)
    assert list(nested.state_dict()) == [f"0.{k}" for k in detector.state_dict()]
    nested.load_state_dict({f"0.{k}": v for k, v in other.state_dict().items()})
    # Parameter names keep the prefix; name rules such as "backbone" in name still match.
    assert any(name.startswith("detector.backbone.") for name, _ in adapter.named_parameters())
    with pytest.raises(ValueError, match="'L'"):
        Detectron2Adapter(detector=detector, input_format="L")


def test_lr_factors_by_name_first_matching_substring_wins() -> None:
    factor = lr_factors_by_name({"backbone": 0.1, "sampling_offsets": 0.5})
    assert factor("detector.backbone.layer1.0.conv1.weight") == 0.1
    assert factor("detector.decoder.layers.0.attn.sampling_offsets.weight") == 0.5
    assert factor("detector.class_embed.weight") == 1.0
    both = lr_factors_by_name({"sampling_offsets": 0.5, "backbone": 0.1})
    assert both("backbone.sampling_offsets") == 0.5  # the mapping's order decides


@torch.no_grad()
def test_eval_rescales_to_requested_size_like_the_detector() -> None:
    detector = tiny_dab_detr().eval()
    adapter = Detectron2Adapter(detector=detector, input_format="BGR").eval()
    rgb = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)
    (result,) = adapter([{"image": rgb.flip(0), "height": 96, "width": 128}])
    instances = result["instances"]
    assert instances.image_size == (96, 128)
    # The detector asked directly for 96 x 128 boxes, minus the empty ones that
    # detector_postprocess drops, gives the same predictions.
    (expected,) = detector([{"image": rgb, "height": 96, "width": 128}])
    keep = Boxes(expected["boxes"]).nonempty()
    torch.testing.assert_close(instances.pred_boxes.tensor, expected["boxes"][keep])
    torch.testing.assert_close(instances.scores, expected["scores"][keep])
    assert torch.equal(instances.pred_classes, expected["labels"][keep])
    # Without a requested size the boxes stay in the input image's size.
    (result,) = adapter([{"image": rgb.flip(0)}])
    assert result["instances"].image_size == (48, 64)


@pytest.fixture
def synthetic_dataset_names(synthetic_root: Path):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    names = {}
    for split in ("train", "val"):
        name = f"sqr_test_d2_synthetic_{split}"
        register_coco_instances(
            name,
            {},
            str(synthetic_root / "annotations" / f"{split}.json"),
            str(synthetic_root / split),
        )
        names[split] = name
    yield names
    for name in names.values():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_detectron2_trains_and_evaluates_the_adapter(synthetic_dataset_names, tmp_path) -> None:
    import detectron2.data.transforms as T
    from detectron2.data import (
        DatasetMapper,
        build_detection_test_loader,
        build_detection_train_loader,
        get_detection_dataset_dicts,
    )
    from detectron2.engine import SimpleTrainer
    from detectron2.evaluation import COCOEvaluator, inference_on_dataset

    model = Detectron2Adapter(detector=tiny_dab_detr(NUM_SYNTHETIC_CLASSES), input_format="BGR")
    train_loader = build_detection_train_loader(
        dataset=get_detection_dataset_dicts(synthetic_dataset_names["train"]),
        mapper=DatasetMapper(
            is_train=True,
            augmentations=[T.RandomFlip(), T.ResizeShortestEdge(96, max_size=128)],
            image_format="BGR",
        ),
        total_batch_size=2,
        num_workers=0,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    trainer = SimpleTrainer(model, train_loader, optimizer)
    trainer.train(0, 3)
    # DAB-DETR's 6 stages x (class, box L1, GIoU) losses, all finite after 3 iterations.
    losses = trainer.storage.latest()
    assert len([k for k in losses if k.startswith("loss_")]) == 18
    assert math.isfinite(trainer.storage.history("total_loss").latest())

    # Test images (112-160 px) are resized to a short edge of 64, so every prediction is
    # rescaled back to the annotated size before COCOEvaluator sees it.
    test_loader = build_detection_test_loader(
        dataset=get_detection_dataset_dicts(synthetic_dataset_names["val"], filter_empty=False),
        mapper=DatasetMapper(
            is_train=False, augmentations=[T.ResizeShortestEdge(64, 96)], image_format="BGR"
        ),
        num_workers=0,
    )
    first = next(iter(test_loader))[0]
    model.eval()
    with torch.no_grad():
        (prediction,) = model([first])
    assert prediction["instances"].image_size == (first["height"], first["width"])
    assert first["image"].shape[-2] == 64 < first["height"]
    # use_fast_impl=False: the fast COCOeval is a compiled detectron2 op.
    evaluator = COCOEvaluator(
        synthetic_dataset_names["val"], output_dir=str(tmp_path), use_fast_impl=False
    )
    results = inference_on_dataset(model, test_loader, evaluator)
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75"}
    assert all(math.isfinite(v) or math.isnan(v) for v in results["bbox"].values())
