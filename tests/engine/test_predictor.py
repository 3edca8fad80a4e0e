"""sqr.engine.Predictor: preprocessing, box scale, input kinds, batching and refusals."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.standin import StandInDetector
from helpers.train_net import STANDIN_CONFIG
from PIL import Image
from torch import nn

from sqr.config import LazyConfig
from sqr.engine import IncompatibleCheckpointError, Predictor

# The stand-in config's classes (synthetic_shapes_val) and test transform (short side 128, long
# side at most 256).
CLASSES = ["circle", "square", "triangle", "cross"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A randomly initialised stand-in detector's weights: the predictions only need to be
    deterministic, not good."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("predictor") / "standin.pth"
    torch.save({"model": StandInDetector(num_classes=4).state_dict()}, path)
    return str(path)


@pytest.fixture
def predictor(datasets_dir, checkpoint: str) -> Predictor:
    return Predictor(STANDIN_CONFIG, checkpoint)


def random_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


class ResizedBoxModel(nn.Module):
    """Predicts fixed boxes given in the pixels of the image it receives, rescaled to
    ``height`` x ``width`` as the model contract requires; records its inputs."""

    def __init__(self, boxes: list[list[float]], scores: list[float], labels: list[int]) -> None:
        super().__init__()
        self.boxes = torch.tensor(boxes)
        self.scores = torch.tensor(scores)
        self.labels = torch.tensor(labels, dtype=torch.int32)  # the predictor makes them int64
        self.seen: list[dict] = []

    def forward(self, inputs: list[dict]) -> list[dict]:
        self.seen.extend(inputs)
        outputs = []
        for x in inputs:
            h, w = x["image"].shape[-2:]
            scale = torch.tensor([x["width"] / w, x["height"] / h] * 2)
            outputs.append(
                {"boxes": self.boxes * scale, "scores": self.scores, "labels": self.labels}
            )
        return outputs


def test_boxes_are_in_the_original_images_pixels(predictor: Predictor, monkeypatch) -> None:
    # A 30 x 47 (H x W) image: the test transform scales by 128 / 30, so the short side becomes
    # 128 and the long side round(47 * 128 / 30) = round(200.53) = 201.
    model = ResizedBoxModel([[20.1, 12.8, 100.5, 64.0]], [0.9], [2])
    monkeypatch.setattr(predictor, "model", model)
    out = predictor(random_image(30, 47, seed=0))
    (seen,) = model.seen
    assert seen["image"].shape == (3, 128, 201) and seen["image"].dtype == torch.uint8
    assert (seen["height"], seen["width"]) == (30, 47)
    # x scales by 47 / 201, y by 30 / 128: 20.1 -> 4.7, 12.8 -> 3.0, 100.5 -> 23.5, 64 -> 15.0.
    torch.testing.assert_close(out["boxes"], torch.tensor([[4.7, 3.0, 23.5, 15.0]]))
    assert out["labels"].tolist() == [2] and out["labels"].dtype == torch.int64
    assert out["class_names"] == ["triangle"]
    assert out["scores"].tolist() == pytest.approx([0.9])


def test_preprocess_is_what_every_backend_gets(predictor: Predictor, monkeypatch) -> None:
    # The public preprocessing (sqr-export checks its graphs on it): the test transform of the
    # decoded image and the original size, exactly what __call__ hands the model.
    model = ResizedBoxModel([[0.0, 0.0, 1.0, 1.0]], [0.5], [0])
    monkeypatch.setattr(predictor, "model", model)
    image = random_image(30, 47, seed=0)
    x = predictor.preprocess(image)
    assert x["image"].shape == (3, 128, 201) and x["image"].dtype == torch.uint8
    assert (x["height"], x["width"]) == (30, 47)
    predictor(image)
    (seen,) = model.seen
    assert seen.keys() == x.keys() and torch.equal(seen["image"], x["image"])
    assert (seen["height"], seen["width"]) == (30, 47)


def test_path_pil_and_array_give_identical_outputs(predictor: Predictor, tmp_path: Path) -> None:
    array = random_image(40, 60, seed=1)
    path = tmp_path / "image.png"
    Image.fromarray(array).save(path)
    bgr = np.ascontiguousarray(array[..., ::-1])  # as OpenCV would hold it
    with Image.open(path) as pil:
        outputs = [
            predictor(path),
            predictor(str(path)),
            predictor(pil),
            predictor(array),
            predictor(np.asarray(pil)),  # read-only
            predictor(bgr[..., ::-1]),  # converted to RGB as documented: negative strides
        ]
    reference = outputs[0]
    assert len(reference["boxes"]) == 4  # the stand-in's 4 queries, no threshold
    assert reference["class_names"] == [CLASSES[i] for i in reference["labels"].tolist()]
    for out in outputs[1:]:
        assert out["class_names"] == reference["class_names"]
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(out[key], reference[key]), key


def test_16_bit_images_are_scaled_as_in_training(predictor: Predictor, tmp_path: Path) -> None:
    gray = np.random.default_rng(2).integers(0, 65536, (40, 60), dtype=np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(gray).save(path)
    with Image.open(path) as pil:
        assert pil.mode in ("I;16", "I")  # depends on the Pillow version
        from_pil = predictor(pil)
    from_path = predictor(path)  # read_image, as in training
    # Clipping instead of scaling would give a (nearly) white image and different boxes.
    clipped = predictor(np.repeat(np.minimum(gray, 255).astype(np.uint8)[..., None], 3, axis=2))
    assert torch.equal(from_pil["boxes"], from_path["boxes"])
    assert not torch.equal(clipped["boxes"], from_path["boxes"])


def test_a_list_runs_in_batches_and_equals_one_by_one(
    datasets_dir, checkpoint: str, monkeypatch
) -> None:
    predictor = Predictor(STANDIN_CONFIG, checkpoint, batch_size=2)
    images = [random_image(40, 60, 3), random_image(64, 48, 4), random_image(50, 50, 5)]
    single = [predictor(image) for image in images]
    batch_sizes = []
    forward = predictor.model.forward
    monkeypatch.setattr(
        predictor.model, "forward", lambda x: batch_sizes.append(len(x)) or forward(x)
    )
    batched = predictor(images)
    assert batch_sizes == [2, 1]
    assert predictor(tuple(images[:1]))[0]["class_names"] == single[0]["class_names"]
    assert predictor([]) == []
    # The stand-in's outputs do not depend on batch padding; only float summation order may.
    for one, many in zip(single, batched, strict=True):
        assert one["class_names"] == many["class_names"]
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(many[key], one[key])


@pytest.mark.parametrize(
    ("array", "hint"),
    [
        (np.zeros((20, 30), np.uint8), "grayscale"),
        (np.zeros((20, 30, 4), np.uint8), "alpha"),
        (np.zeros((3, 20, 30), np.uint8), "channels-first"),
        (np.zeros((20, 30, 3), np.float32), "astype"),
        (np.zeros((0, 30, 3), np.uint8), "got shape"),
    ],
)
def test_wrong_arrays_are_named_errors(predictor: Predictor, array: np.ndarray, hint: str) -> None:
    with pytest.raises(ValueError, match=r"H x W x 3 and dtype uint8 in RGB order") as info:
        predictor(array)
    assert str(array.shape) in str(info.value) and hint in str(info.value)


@pytest.mark.parametrize(("mode", "size"), [("RGB", (0, 0)), ("RGB", (0, 12)), ("I;16", (0, 0))])
def test_empty_pil_images_are_named_errors(predictor: Predictor, mode: str, size: tuple) -> None:
    expected = rf"empty PIL image of {size[0]} x {size[1]} pixels \(width x height, mode {mode}"
    with pytest.raises(ValueError, match=expected):
        predictor(Image.new(mode, size))


def test_other_input_types_are_refused(predictor: Predictor) -> None:
    with pytest.raises(TypeError, match="got Tensor"):
        predictor(torch.zeros(3, 20, 30, dtype=torch.uint8))


def test_non_finite_predictions_are_dropped_and_counted(
    predictor: Predictor, monkeypatch, caplog
) -> None:
    model = ResizedBoxModel(
        [[0.0, 0.0, float("nan"), 10.0], [1.0, 1.0, 5.0, 5.0], [2.0, 2.0, 8.0, 8.0]],
        [0.9, float("inf"), 0.7],
        [0, 1, 3],
    )
    monkeypatch.setattr(predictor, "model", model)
    with caplog.at_level(logging.WARNING, logger="sqr.engine.predictor"):
        out = predictor(random_image(128, 128, seed=6))  # 128 x 128: not resized
    assert out["labels"].tolist() == [3] and out["class_names"] == ["cross"]
    torch.testing.assert_close(out["boxes"], torch.tensor([[2.0, 2.0, 8.0, 8.0]]))
    assert "dropped 2 prediction(s) with a non-finite box or score" in caplog.text


def test_class_names_fall_back_to_the_evaluator_then_to_numbers(
    datasets_dir, checkpoint: str, monkeypatch, caplog
) -> None:
    cfg = LazyConfig.load(STANDIN_CONFIG)
    cfg.dataloader.test.dataset = "not_registered"
    cfg.dataloader.evaluator.dataset_name = "synthetic_shapes_val"
    assert Predictor(cfg, checkpoint).class_names == CLASSES
    del cfg.dataloader.evaluator
    with caplog.at_level(logging.WARNING, logger="sqr.engine.predictor"):
        predictor = Predictor(cfg, checkpoint)
    assert predictor.class_names == []
    assert "'not_registered' is not registered" in caplog.text
    monkeypatch.setattr(predictor, "model", ResizedBoxModel([[0, 0, 1, 1]] * 2, [0.5, 0.4], [1, 7]))
    assert predictor(random_image(20, 20, seed=7))["class_names"] == ["class_1", "class_7"]


def test_refuses_missing_and_foreign_weights(datasets_dir, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Predictor needs trained weights"):
        Predictor(STANDIN_CONFIG)
    foreign = tmp_path / "foreign.pth"
    torch.save({"model": nn.Linear(2, 2).state_dict()}, foreign)
    with pytest.raises(IncompatibleCheckpointError, match="^Predictor: "):
        Predictor(STANDIN_CONFIG, str(foreign))
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        Predictor(STANDIN_CONFIG, str(foreign), batch_size=0)


def test_a_config_that_trains_an_ema_predicts_with_it(datasets_dir, tmp_path: Path) -> None:
    # As --eval-only: the weights a config evaluates are its moving average where it has one.
    torch.manual_seed(0)
    trained = StandInDetector(num_classes=4).state_dict()
    averaged = {k: v + 1.0 if v.is_floating_point() else v for k, v in trained.items()}
    path = tmp_path / "with_ema.pth"
    torch.save({"model": trained, "ema": {"module": averaged, "updates": 5}}, path)
    cfg = LazyConfig.load(STANDIN_CONFIG)
    plain = Predictor(cfg, str(path)).model.state_dict()
    assert all(torch.equal(plain[k], v) for k, v in trained.items())
    cfg.train.ema.enabled = True
    ema = Predictor(cfg, str(path)).model.state_dict()
    assert all(torch.equal(ema[k], v) for k, v in averaged.items())
    torch.save({"model": trained}, path)
    with pytest.raises(IncompatibleCheckpointError, match="no EMA weights"):
        Predictor(cfg, str(path))
