"""Pisov detector: resampling, decoding, checkpoints, and a tiny trained model finding toys."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)
from vertebrae_toy import toy_record

from spinexr.pipeline.vertebrae.anchors import anchor_shapes, encode
from spinexr.pipeline.vertebrae.detector import (
    ARCH,
    PisovDetector,
    PisovHyper,
    build_model,
    decode_output,
    load_checkpoint,
    model_input,
    resample,
    save_checkpoint,
)
from spinexr.pipeline.vertebrae.genant import genant_index, heights
from spinexr.pipeline.vertebrae.net import KEYPOINT_OUTPUTS, SCORES, PisovNet
from spinexr.pipeline.vertebrae.objects import DetectedObject, KeypointModel, ObjectKind
from spinexr.training.vertebrae.augment import AugmentConfig
from spinexr.training.vertebrae.records import KeypointRecord
from spinexr.training.vertebrae.train import PisovRecipe, match_objects, train_pisov

TINY = PisovRecipe(
    name="test",
    iterations=300,
    batch_size=4,
    lr=3e-3,
    lr_halvings=(0.6, 0.8, 0.9),
    hyper=PisovHyper(channels=(8, 16, 32), model_spacing_mm=2.0),
    augment=AugmentConfig(crop=96, rotation_deg=4.0),
    threads=1,
)

WEDGE = [(25.0, 25.0, 25.0), (17.0, 22.0, 25.0), (25.0, 25.0, 25.0), (25.0, 19.0, 25.0)]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: the test machine's cores are shared (two threads thrash)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _train_records() -> list[KeypointRecord]:
    out = []
    for seed in range(6):
        spacing = (0.6, 0.6) if seed % 2 else (0.9, 0.9)
        out.append(toy_record(seed, spacing=spacing, face_left=seed % 3 != 0, heights_mm=WEDGE))
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pisov")
    return train_pisov(
        _train_records(),
        out,
        seed=0,
        iterations=TINY.iterations,
        batch_size=TINY.batch_size,
        lr=TINY.lr,
        progress=False,
        recipe=TINY,
    )


# ----------------------------------------------------------------------------- preprocessing


def test_resample_maps_points_both_ways_and_keeps_geometry() -> None:
    img = np.zeros((300, 200), np.uint8)
    img[100:140, 60:120] = 255  # 40 rows x 60 columns
    res = resample(img, (0.5, 0.75), 2.0)
    assert tuple(res.image.shape) == (75, 75)
    assert res.scale == pytest.approx((4.0, 200 / 75))
    ys, xs = np.nonzero(res.image.numpy() > 0.5)
    centre_model = np.array([xs.mean(), ys.mean()]) + 0.5  # pixel centres at i + 0.5
    assert res.to_original(centre_model) == pytest.approx([90.0, 120.0], abs=1.0)
    pts = np.array([[3.0, 4.0], [150.0, 250.0]])
    assert res.to_original(res.to_model(pts)) == pytest.approx(pts)
    with pytest.raises(ValueError):
        resample(img, (0.0, 1.0), 2.0)


def test_model_input_is_z_scored_and_padded_with_black() -> None:
    img = torch.rand((37, 50))
    x = model_input(img, 8)
    assert x.shape == (1, 1, 40, 56)
    inner = x[0, 0, :37, :50]
    assert float(inner.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(inner.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    black = float(-img.mean() / img.std(unbiased=False))
    assert float(x[0, 0, 39, 55]) == pytest.approx(black, abs=1e-5)


def test_network_output_layout_and_stride_check() -> None:
    net = PisovNet((4, 8, 16), 16, head_channels=12)
    assert net.stride == 4
    out = net(torch.zeros((2, 1, 24, 32)))
    assert out.scores.shape == (2, 16, SCORES, 24, 32)
    assert out.features.shape == (2, 12, 24, 32)
    assert out.facing.shape == (2,)
    with pytest.raises(ValueError):
        net(torch.zeros((1, 1, 25, 32)))
    # The objectness starts near the prior, not at one half.
    assert float(torch.sigmoid(out.scores[:, :, 0].detach()).mean()) < 0.01


def test_sparse_keypoints_equal_the_dense_one_by_one_convolution() -> None:
    torch.manual_seed(0)
    net = PisovNet((4, 8), 16, head_channels=6)
    out = net(torch.randn((2, 1, 8, 8)))
    w = net.keypoint_layer.weight.detach()[:, :, None, None]
    dense = F.conv2d(out.features.detach(), w, net.keypoint_layer.bias.detach())
    dense = dense.view(2, 16, KEYPOINT_OUTPUTS, 8, 8)
    n, a, y, x = (torch.tensor(v) for v in ([0, 1, 1], [3, 15, 0], [2, 7, 0], [5, 1, 4]))
    sparse = net.keypoints(out.features, n, a, y, x).detach()
    assert torch.allclose(sparse, dense[n, a, :, y, x], atol=1e-5)


def _scores_with(at: list[tuple[int, int, int, float]]) -> torch.Tensor:
    scores = torch.full((16, SCORES, 40, 40), -10.0)
    for a, y, x, logit in at:
        scores[a, 0, y, x] = logit
        scores[a, 1, y, x] = 3.0
    return scores


def test_decoding_inverts_the_encoding_and_suppresses_duplicates() -> None:
    shapes = anchor_shapes(2.0)
    kp = np.array([[10, 12], [10, 22], [17, 11], [17, 21], [24, 12], [24, 22]], dtype=float)
    kp_t = torch.tensor(kp, dtype=torch.float32)

    def encoded(a: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # Every anchor points at the same vertebra.
        centres = torch.stack([x, y], dim=1).float() + 0.5
        return encode(kp_t.expand(len(a), 6, 2), centres, shapes[a]).reshape(-1, 12)

    # The third anchor decodes the same keypoints from far away: suppressed too.
    scores = _scores_with([(5, 17, 17, 4.0), (6, 16, 17, 2.0), (7, 30, 30, 3.0)])
    raw = decode_output(scores, encoded, shapes, (40, 40), score_threshold=0.5, nms_iou=0.3)
    assert raw.keypoints.shape == (1, 6, 2)
    assert raw.keypoints[0].numpy() == pytest.approx(kp, abs=1e-4)
    assert float(raw.scores[0]) == pytest.approx(float(torch.sigmoid(torch.tensor(4.0))))
    assert float(raw.sacrum[0]) > 0.9
    # Anchors centred in the padding are not decoded; nothing above threshold, nothing found.
    cut = decode_output(scores, encoded, shapes, (20, 20), score_threshold=0.5, nms_iou=0.3)
    assert cut.scores.numel() == 1
    none = decode_output(scores, encoded, shapes, (40, 40), score_threshold=0.999, nms_iou=0.3)
    assert none.scores.numel() == 0 and none.keypoints.shape == (0, 6, 2)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_is_weights_only_and_self_contained(tmp_path: Path) -> None:
    hyper = PisovHyper(channels=(4, 8), model_spacing_mm=2.5, score_threshold=0.3)
    torch.manual_seed(1)
    model = build_model(hyper)
    path = save_checkpoint(tmp_path / "m.pt", model, hyper, {"seed": 1, "data_digest": "abc"})
    raw = torch.load(path, weights_only=True)
    assert raw["arch"] == ARCH and raw["hyper"]["channels"] == [4, 8]
    det = PisovDetector.from_checkpoint(path, "cpu")
    assert det.hyper == hyper and det.training["data_digest"] == "abc"
    x = torch.randn((1, 1, 16, 16))
    with torch.no_grad():
        assert torch.equal(det.model(x).scores, model.eval()(x).scores)
    assert det.name.startswith("pisov-keypoints")
    torch.save({"arch": "other"}, tmp_path / "x.pt")
    with pytest.raises(ValueError):
        load_checkpoint(tmp_path / "x.pt")
    torch.save({**raw, "version": 99}, tmp_path / "y.pt")
    with pytest.raises(ValueError):
        load_checkpoint(tmp_path / "y.pt")


def test_untrained_detector_on_a_blank_image_finds_nothing(tmp_path: Path) -> None:
    hyper = PisovHyper(channels=(4, 8))
    path = save_checkpoint(tmp_path / "m.pt", build_model(hyper), hyper, {})
    det: KeypointModel = PisovDetector.from_checkpoint(path)
    assert det.predict(np.zeros((64, 48), np.uint8), (1.0, 1.0)) == []
    assert det.predict(np.zeros((64, 48), np.uint8), None) == []


# ----------------------------------------------------------------------------- trained


def _errors(found: list[DetectedObject], record: KeypointRecord) -> tuple[int, int, float]:
    truth = [o.keypoints for o in record.objects]
    pairs = match_objects(found, truth)
    worst = max(
        (float(np.abs(found[i].keypoints - truth[j]).max()) for i, j in pairs), default=np.inf
    )
    return len(pairs), len(found), worst


@pytest.mark.slow
def test_tiny_model_finds_the_toys_back(trained: Path) -> None:
    det = PisovDetector.from_checkpoint(trained)
    for rec in [_train_records()[1], toy_record(50, spacing=(0.75, 0.75), heights_mm=WEDGE)]:
        found = det.predict(rec.display, rec.spacing_mm)
        matched, n_found, worst = _errors(found, rec)
        assert matched == len(rec.objects) == n_found
        # Within a few original pixels (the model works at 2 mm = 2.7-3.3 pixels).
        assert worst < 5.0
        kinds = sorted(d.kind for d in found)
        assert kinds.count(ObjectKind.SACRUM) == 1


@pytest.mark.slow
def test_keypoints_are_anatomical_on_images_facing_either_way(trained: Path) -> None:
    det = PisovDetector.from_checkpoint(trained)
    for face_left in (True, False):
        rec = toy_record(
            60, spacing=(0.8, 0.8), face_left=face_left, heights_mm=WEDGE, sacrum=False
        )
        found = sorted(det.predict(rec.display, rec.spacing_mm), key=lambda d: d.centre[1])
        assert len(found) == 4
        wedge = heights(found[1].keypoints)
        assert np.argmin(wedge) == 0  # the anterior height is the short one
        anterior_x = found[1].keypoints[0, 0]
        assert (anterior_x < found[1].centre[0]) == face_left


@pytest.mark.slow
def test_without_spacing_the_scale_search_gives_the_same_genant_ratios(trained: Path) -> None:
    det = PisovDetector.from_checkpoint(trained)
    rec = toy_record(70, spacing=(0.7, 0.7), heights_mm=WEDGE)
    with_spacing = det.predict(rec.display, rec.spacing_mm)
    search = det.search_scale(rec.display)
    assert len(search.qualities) == 7
    without = det.predict(rec.display, None)
    assert len(without) == len(with_spacing) == len(rec.objects)
    truth = [o.keypoints for o in rec.objects if o.kind is ObjectKind.VERTEBRA]
    for found in (with_spacing, without):
        verts = [d for d in found if d.kind is ObjectKind.VERTEBRA]
        for i, j in match_objects(verts, truth):
            g_found = genant_index(heights(verts[i].keypoints))
            g_true = genant_index(heights(truth[j]))
            assert g_found == pytest.approx(g_true, abs=0.05)
    # The scale kept is within the training jitter of the truth.
    assert search.best.spacing_mm[0] == pytest.approx(0.7, rel=0.2)


def test_hyper_round_trip() -> None:
    h = replace(PisovHyper(), channels=(3, 5), anchor_ratios=(1.0,))
    assert PisovHyper.from_dict(h.to_dict()) == h
