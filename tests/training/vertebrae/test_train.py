"""Pisov detector training: crops and their keypoints, targets, loss, reproducibility."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from vertebrae_toy import toy_record

from spinexr.pipeline.vertebrae.detector import PisovHyper, build_model, load_checkpoint
from spinexr.pipeline.vertebrae.objects import ObjectKind
from spinexr.training.vertebrae.augment import (
    AugmentConfig,
    facing_of,
    prepare_record,
    sample_crop,
)
from spinexr.training.vertebrae.records import KeypointRecord
from spinexr.training.vertebrae.train import (
    CHECKPOINT_NAME,
    PisovRecipe,
    build_targets,
    data_digest,
    pisov_loss,
    reference_size_mm,
    train_pisov,
)

HYPER = PisovHyper(channels=(8, 16, 32), model_spacing_mm=2.0)
RECIPE = PisovRecipe(
    name="test",
    iterations=10,
    batch_size=2,
    lr=3e-3,
    hyper=HYPER,
    augment=AugmentConfig(crop=96),
    threads=1,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: the test machine's cores are shared (two threads thrash)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _records() -> list[KeypointRecord]:
    return [toy_record(s, spacing=(0.8, 0.8) if s % 2 else (1.1, 1.1)) for s in range(3)]


def test_crop_keypoints_follow_the_image_under_zoom_rotation_and_flip() -> None:
    rec = toy_record(3, spacing=(0.7, 0.7), sacrum=False)
    prepared = prepare_record(rec, 2.0)
    assert prepared.keypoints.shape == (4, 6, 2) and not prepared.sacrum.any()
    config = AugmentConfig(crop=96, rotation_deg=10, scale_jitter=0.2, noise=0.0, gamma=0.0)
    rng = np.random.default_rng(0)
    flipped_seen = 0
    for _ in range(12):
        s = sample_crop(prepared, config, rng)
        img = s.image[0].numpy()
        assert img.shape == (96, 96)
        assert abs(float(img.mean())) < 1.5
        for kp in s.keypoints.numpy():
            # The body's centre is bright, a point well outside it (beyond the anterior
            # edge, away from the posterior element) is dark background.
            centre = kp.mean(axis=0)
            cy, cx = round(centre[1]), round(centre[0])
            if 0 <= cy < 96 and 0 <= cx < 96:
                assert img[cy, cx] > 0.5
            # Image order: the first height is on the left; the facing says which is anterior.
            assert kp[0, 0] < kp[4, 0]
            anterior = kp[4:6] if s.faces_right == 1.0 else kp[0:2]
            anterior_mid = anterior.mean(axis=0)
            outside = anterior_mid + (anterior_mid - centre) * 0.6
            oy, ox = round(outside[1]), round(outside[0])
            if 0 <= oy < 96 and 0 <= ox < 96:
                assert img[oy, ox] < img[cy, cx] - 1.0
        flipped_seen += int(s.faces_right == 1.0)
    assert 0 < flipped_seen < 12


def test_facing_comes_from_the_keypoints_and_right_facing_images_are_put_in_image_order() -> None:
    left = toy_record(6, face_left=True)
    right = toy_record(6, face_left=False)
    assert facing_of([o.keypoints for o in left.objects]) is False
    assert facing_of([o.keypoints for o in right.objects]) is True
    assert facing_of([]) is None
    pl, pr = prepare_record(left, 2.0), prepare_record(right, 2.0)
    assert pl.faces_right is False and pr.faces_right is True
    for p in (pl, pr):
        assert torch.all(p.keypoints[:, 0, 0] < p.keypoints[:, 4, 0])
    # A right-facing image's first height is its posterior one.
    wedge = [(15.0, 25.0, 25.0)] + [(25.0, 25.0, 25.0)] * 3
    pw = prepare_record(toy_record(7, face_left=False, heights_mm=wedge), 2.0)
    k = pw.keypoints[0]
    assert float(k[5, 1] - k[4, 1]) == pytest.approx(15 / 2, abs=0.1)


def test_objects_cut_by_the_crop_are_ignored_not_negatives() -> None:
    rec = toy_record(4, spacing=(0.5, 0.5), size_mm=(220.0, 130.0))
    prepared = prepare_record(rec, 2.0)
    config = AugmentConfig(crop=48, rotation_deg=0, scale_jitter=0.0)
    rng = np.random.default_rng(1)
    samples = [sample_crop(prepared, config, rng) for _ in range(20)]
    assert any(s.ignore_boxes.shape[0] > 0 for s in samples)
    targets = build_targets(samples, HYPER.shapes())
    assert float(targets.weight.min()) == 0.0
    assert targets.encoded.shape[1] == 12
    # Every target object has positives.
    n_targets = sum(s.keypoints.shape[0] for s in samples)
    assert targets.index[0].numel() >= n_targets


def test_sacrum_targets_and_genant_weights() -> None:
    wedge = [(15.0, 20.0, 25.0), (25.0, 25.0, 25.0), (25.0, 25.0, 25.0), (25.0, 25.0, 25.0)]
    rec = toy_record(5, heights_mm=wedge)
    prepared = prepare_record(rec, 2.0)
    assert prepared.sacrum.tolist() == [False] * 4 + [True]
    assert prepared.genant[0] == pytest.approx(0.6, abs=0.02)
    assert prepared.genant[4] == 1.0
    s = sample_crop(
        prepared,
        AugmentConfig(crop=160, scale_jitter=0.0, rotation_deg=0),
        np.random.default_rng(0),
    )
    t = build_targets([s], HYPER.shapes())
    assert set(t.sacrum.tolist()) == {0.0, 1.0}
    assert float(t.genant.min()) == pytest.approx(0.6, abs=0.02)


def test_loss_has_the_papers_terms_and_decreases() -> None:
    prepared = [prepare_record(r, 2.0) for r in _records()]
    torch.manual_seed(0)
    model = build_model(HYPER)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    fixed = [sample_crop(p, RECIPE.augment, rng) for p in prepared]
    x = torch.stack([s.image for s in fixed])
    targets = build_targets(fixed, HYPER.shapes())
    losses = []
    for _ in range(40):
        parts = pisov_loss(model, model(x), targets)
        opt.zero_grad()
        parts.total.backward()
        opt.step()
        losses.append(float(parts.total.detach()))
        assert parts.positives > 0
    terms = parts.objectness + parts.keypoints + parts.sacrum + parts.facing
    assert parts.total.item() == pytest.approx(terms, rel=1e-4)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_same_seed_same_weights_and_checkpoint_contents(tmp_path: Path) -> None:
    recs = _records()
    kw = dict(iterations=4, batch_size=2, lr=1e-3, progress=False, recipe=RECIPE)
    a = train_pisov(recs, tmp_path / "a", seed=3, **kw)  # type: ignore[arg-type]
    b = train_pisov(recs, tmp_path / "b", seed=3, **kw)  # type: ignore[arg-type]
    c = train_pisov(recs, tmp_path / "c", seed=4, **kw)  # type: ignore[arg-type]
    assert a.name == CHECKPOINT_NAME
    ca, cb, cc = (load_checkpoint(p) for p in (a, b, c))
    for k, v in ca["state_dict"].items():
        assert torch.equal(v, cb["state_dict"][k]), k
    assert any(not torch.equal(v, cc["state_dict"][k]) for k, v in ca["state_dict"].items())
    meta = ca["training"]
    assert meta["seed"] == 3 and meta["iterations"] == 4 and meta["records"] == 3
    assert meta["data_digest"] == data_digest(recs) != data_digest(recs[:2])
    assert ca["hyper"]["channels"] == [8, 16, 32]
    # The typical body size for the scale search comes from the data (toys: sqrt(25 x 36)).
    assert ca["hyper"]["reference_size_mm"] == pytest.approx(reference_size_mm(recs))
    assert reference_size_mm(recs) == pytest.approx(30.0, abs=1.5)
    assert torch.get_num_threads() >= 1


def test_records_without_spacing_are_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recs = _records()
    no_spacing = KeypointRecord("s", "s", "i", recs[0].display, None, recs[0].objects)
    path = train_pisov(
        [no_spacing, recs[1]], tmp_path, seed=0, iterations=2, batch_size=1, lr=1e-3, recipe=RECIPE
    )
    assert load_checkpoint(path)["training"]["records"] == 1
    assert "[pisov]" in capsys.readouterr().err  # progress lines
    with pytest.raises(ValueError, match="spacing"):
        train_pisov(
            [no_spacing], tmp_path, seed=0, iterations=2, batch_size=1, lr=1e-3, recipe=RECIPE
        )


def test_sacrum_kind_is_in_the_records() -> None:
    assert _records()[0].sacrum is not None
    assert _records()[0].sacrum.kind is ObjectKind.SACRUM  # type: ignore[union-attr]
