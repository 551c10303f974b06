"""Keypoint R-CNN baseline: model, input scale, flip augmentation, training, checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spinexr.pipeline.errors import WeightsError
from spinexr.pipeline.vertebrae.genant import heights
from spinexr.pipeline.vertebrae.krcnn import (
    ARCH,
    CHECKPOINT_VERSION,
    KeypointRCNNModel,
    KRCNNConfig,
    build_keypointrcnn,
    model_input,
    model_size,
    resample,
    rescale_points,
)
from spinexr.pipeline.vertebrae.objects import ObjectKind
from spinexr.training.vertebrae.krcnn_train import (
    NO_AUGMENTATION,
    Augmentation,
    flip_horizontal,
    make_target,
    train_keypointrcnn,
    training_sample,
)
from spinexr.training.vertebrae.records import AnnotatedObject, KeypointRecord

TINY = KRCNNConfig.cpu(
    spacing_mm=1.0,
    max_size=160,
    rpn_pre_nms_top_n_train=64,
    rpn_post_nms_top_n_train=32,
    rpn_pre_nms_top_n_test=64,
    rpn_post_nms_top_n_test=32,
    box_batch_size_per_image=32,
    detections_per_img=10,
    score_threshold=0.0,
    keypoint_head_channels=(32, 32),
)


def trapezoid_keypoints(
    x0: float, y: float, depth: float, h: tuple[float, float, float]
) -> np.ndarray:
    """Six keypoints of a body whose anterior wall is at ``x0`` (left), centred on row ``y``."""
    xs = (x0, x0 + depth / 2, x0 + depth)
    return np.array(
        [p for x, hh in zip(xs, h, strict=True) for p in ((x, y - hh / 2), (x, y + hh / 2))]
    )


def render(shape: tuple[int, int], bodies: list[np.ndarray]) -> np.ndarray:
    """Bright bodies on a dark background: between the top and bottom polylines of each."""
    rows, cols = shape
    image = np.full(shape, 20, dtype=np.uint8)
    yy, xx = np.mgrid[0:rows, 0:cols]
    for kp in bodies:
        top = np.interp(xx, kp[0::2, 0], kp[0::2, 1])
        bottom = np.interp(xx, kp[1::2, 0], kp[1::2, 1])
        inside = (xx >= kp[0, 0]) & (xx <= kp[4, 0]) & (yy >= top) & (yy <= bottom)
        image[inside] = 220
    return image


def synthetic_record(index: int = 0, shape: tuple[int, int] = (128, 96)) -> KeypointRecord:
    rng = np.random.default_rng(index)
    bodies = []
    for k, y in enumerate((24.0, 56.0, 88.0)):
        h = 20.0 + rng.uniform(-2, 2)
        wedge = 0.7 if (index + k) % 3 == 0 else 1.0
        bodies.append(trapezoid_keypoints(30.0 + rng.uniform(-4, 4), y, 36.0, (h * wedge, h, h)))
    bodies.append(trapezoid_keypoints(28.0, 116.0, 40.0, (16.0, 16.0, 16.0)))
    kinds = [ObjectKind.VERTEBRA] * 3 + [ObjectKind.SACRUM]
    return KeypointRecord(
        study=f"s{index}",
        series="1",
        image=f"i{index}",
        display=render(shape, bodies),
        spacing_mm=(1.0, 1.0),
        objects=[AnnotatedObject(kind, None, kp) for kind, kp in zip(kinds, bodies, strict=True)],
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("krcnn")
    records = [synthetic_record(i) for i in range(3)]
    return train_keypointrcnn(
        records,
        out,
        seed=3,
        iterations=2,
        batch_size=2,
        lr=1e-4,
        config=TINY,
        progress=False,
        threads=1,
    )


@pytest.mark.parametrize(
    ("backbone", "fpn"),
    [("resnet18", 128), ("resnet50", 256)],  # the second is keypointrcnn_resnet50_fpn itself
)
def test_forward_backward_six_keypoints_three_classes(backbone: str, fpn: int) -> None:
    torch.manual_seed(0)
    config = KRCNNConfig.cpu(**{**TINY.to_dict(), "backbone": backbone, "fpn_channels": fpn})
    model = build_keypointrcnn(config)
    assert model.roi_heads.keypoint_predictor.kps_score_lowres.out_channels == 6
    assert model.roi_heads.box_predictor.cls_score.out_features == 3
    assert model.backbone.out_channels == fpn
    model.train()
    image, target = training_sample(synthetic_record(), config, np.random.default_rng(0))
    assert target["keypoints"].shape == (4, 6, 3)
    losses = model([image], [target])
    assert {"loss_keypoint", "loss_classifier", "loss_objectness"} <= set(losses)
    sum(losses.values()).backward()
    grad = model.roi_heads.keypoint_predictor.kps_score_lowres.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_horizontal_flip_swaps_anterior_and_posterior() -> None:
    wedge = trapezoid_keypoints(20.0, 40.0, 30.0, (12.0, 16.0, 20.0))  # anterior shortest
    image = render((80, 64), [wedge])
    flipped, points = flip_horizontal(image, wedge[None])
    kp = points[0]
    assert np.array_equal(flipped, image[:, ::-1])
    # The anterior indices hold the left wall again, and it is the former posterior wall.
    assert kp[0, 0] < kp[2, 0] < kp[4, 0]
    assert kp[0, 1] < kp[1, 1] and kp[4, 1] < kp[5, 1]  # top above bottom
    h_a, h_m, h_p = heights(kp)
    assert (h_a, h_m, h_p) == pytest.approx((20.0, 16.0, 12.0))
    # Every point lands on the mirrored pixel that carried it.
    for (x, y), (fx, fy) in zip(wedge, kp[[4, 5, 2, 3, 0, 1]], strict=True):
        assert fx == 63 - x and fy == y
    twice = flip_horizontal(flipped, points)
    assert np.array_equal(twice[0], image) and np.allclose(twice[1], wedge[None])


def test_training_sample_flip_and_target_boxes() -> None:
    record = synthetic_record()
    config = TINY
    plain = training_sample(record, config, np.random.default_rng(0), NO_AUGMENTATION)
    always = Augmentation(hflip=1.0, zoom=(1.0, 1.0), gamma=(1.0, 1.0))
    mirrored = training_sample(record, config, np.random.default_rng(0), always)
    assert torch.equal(mirrored[0], plain[0].flip(-1))
    a, b = plain[1]["keypoints"], mirrored[1]["keypoints"]
    width = plain[0].shape[-1]
    assert torch.allclose(b[:, :, 0], width - a[:, [4, 5, 2, 3, 0, 1], 0])
    assert torch.allclose(b[:, :, 1], a[:, [4, 5, 2, 3, 0, 1], 1])
    assert (b[:, :, 2] == 2).all()
    assert plain[1]["labels"].tolist() == [1, 1, 1, 2]
    # Boxes: the keypoints' box padded by 10 % on each side.
    kp = a[:, :, :2]
    lo, hi = kp.amin(dim=1), kp.amax(dim=1)
    pad = 0.1 * (hi - lo)
    boxes = plain[1]["boxes"]
    assert torch.allclose(boxes[:, :2], lo - pad) and torch.allclose(boxes[:, 2:], hi + pad)


def test_make_target_clips_boxes_and_drops_degenerate_objects() -> None:
    inside = trapezoid_keypoints(10.0, 20.0, 20.0, (10.0, 10.0, 10.0))
    cut = trapezoid_keypoints(-30.0, 20.0, 20.0, (10.0, 10.0, 10.0))  # left of the image
    target = make_target(np.stack([inside, cut]), [1, 1], (40, 50), 0.1)
    assert target["boxes"].shape == (1, 4) and target["keypoints"].shape == (1, 6, 3)
    assert target["boxes"][0, 0] >= 0


def test_model_size_spacing_nominal_and_cap() -> None:
    config = KRCNNConfig(spacing_mm=1.0, max_size=500)
    assert model_size((200, 100), (2.0, 1.5), config) == (400, 150)
    assert model_size((860, 600), None, config) == (430, 300)  # 430 mm over the rows
    assert model_size((1000, 500), (1.0, 1.0), config) == (500, 250)  # capped
    with pytest.raises(ValueError, match="spacing"):
        model_size((10, 10), (0.0, 1.0), config)


def test_rescale_points_round_trip_and_pixel_centres() -> None:
    p = np.array([[0.0, 0.0], [9.0, 19.0]])
    q = rescale_points(p, (20, 10), (40, 20))
    assert np.allclose(q, [[0.5, 0.5], [18.5, 38.5]])  # pixel centres of a 2× image
    assert np.allclose(rescale_points(q, (40, 20), (20, 10)), p)


def test_training_is_reproducible(tmp_path: Path, trained: Path) -> None:
    records = [synthetic_record(i) for i in range(3)]
    again = train_keypointrcnn(
        records,
        tmp_path,
        seed=3,
        iterations=2,
        batch_size=2,
        lr=1e-4,
        config=TINY,
        progress=False,
        threads=1,
    )
    a = torch.load(trained, weights_only=True)["state_dict"]
    b = torch.load(again, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_round_trip_gives_identical_predictions(trained: Path) -> None:
    ckpt = torch.load(trained, map_location="cpu", weights_only=True)
    assert ckpt["arch"] == ARCH and ckpt["version"] == CHECKPOINT_VERSION
    assert KRCNNConfig.from_dict(ckpt["config"]) == TINY
    assert ckpt["training"]["iterations"] == 2 and ckpt["training"]["seed"] == 3

    first = KeypointRCNNModel.from_checkpoint(trained)
    second = KeypointRCNNModel.from_checkpoint(trained, device="cpu")
    assert first.name == "keypointrcnn-resnet18-fpn 1"
    image = synthetic_record(7).display
    a, b = first.predict(image, (1.0, 1.0)), second.predict(image, (1.0, 1.0))
    assert a, "score_threshold 0 keeps the untrained model's detections"
    assert [(o.kind, o.score) for o in a] == [(o.kind, o.score) for o in b]
    assert all(np.array_equal(x.keypoints, y.keypoints) for x, y in zip(a, b, strict=True))
    assert all(o.keypoints.shape == (6, 2) and o.kind in ObjectKind for o in a)


def test_predict_returns_original_pixels_at_a_known_scale(trained: Path) -> None:
    model = KeypointRCNNModel.from_checkpoint(trained)
    # 64 rows at 2 mm and 96 columns at 1 mm: the model (1 mm) sees 128 × 96.
    image = synthetic_record(5).display[::2]
    objects = model.predict(image, (2.0, 1.0))
    with torch.inference_mode():
        raw = model.network([model_input(resample(image, (128, 96)))])[0]
    keep = raw["scores"] >= TINY.score_threshold
    assert objects and len(objects) <= int(keep.sum())
    # torchvision's continuous model coordinates u: original x = u_x / 1 - 0.5, y = u_y / 2 - 0.5.
    expected = raw["keypoints"][keep][:, :, :2].double().numpy()
    expected[:, :, 1] /= 2.0
    expected -= 0.5
    for obj in objects:
        distance = np.abs(expected - obj.keypoints[None]).max(axis=(1, 2))
        assert distance.min() < 1e-4


def test_from_checkpoint_refuses_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "other.pt"
    torch.save({"arch": "something-else", "version": 1}, bad)
    with pytest.raises(WeightsError, match="not a Keypoint R-CNN"):
        KeypointRCNNModel.from_checkpoint(bad)
    with pytest.raises(WeightsError, match="cannot read"):
        KeypointRCNNModel.from_checkpoint(tmp_path / "missing.pt")
