"""Training of the CT centre-line localiser on CT phantoms (short CPU runs)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch

from spinexr.pipeline.ct.localise import LocaliserConfig, build_localiser, lps_to_index
from spinexr.training.ct.localise_train import (
    LocaliserRecipe,
    PreparedPhantom,
    evaluate_localiser,
    make_phantoms,
    prepare_phantom,
    sample_crop,
    train_localiser,
)

CONFIG = LocaliserConfig(channels=(4, 8))
RECIPE = LocaliserRecipe(
    phantoms=3, heads=0, steps=70, batch=2, crop=(16, 48, 48), config=CONFIG, log_every=10
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def data() -> list[PreparedPhantom]:
    return [prepare_phantom(p, CONFIG) for p in make_phantoms(RECIPE.phantoms, RECIPE.seed)]


def test_prepared_targets_lie_on_the_centre_line(data: list[PreparedPhantom]) -> None:
    phantom = make_phantoms(1, RECIPE.seed)[0]
    item = data[0]
    assert item.array.ndim == 3 and item.target.shape == (item.array.shape[0], 2)
    assert item.present.all()  # body phantoms: the line crosses every slice
    # slice 0 of both grids is the same plane: same point
    np.testing.assert_allclose(item.truth_lps[0], phantom.centreline[0])
    idx = lps_to_index(item.affine, item.truth_lps)
    np.testing.assert_allclose(idx[:, 0], np.arange(len(idx)), atol=1e-6)


def test_crops_keep_the_centre_points_inside(data: list[PreparedPhantom]) -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        vol, tgt = sample_crop(data[1], (16, 48, 48), rng)
        assert vol.shape == (16, 48, 48)
        ok = ~np.isnan(tgt[:, 0])
        assert ok.any()
        assert (tgt[ok] >= 0).all() and (tgt[ok] <= 47).all()


def test_head_phantom_has_no_spine_slices() -> None:
    heads = make_phantoms(0, 5, heads=1)
    item = prepare_phantom(heads[0], CONFIG)
    assert not item.present.any()


def test_short_training_halves_the_error_and_is_reproducible(
    data: list[PreparedPhantom],
) -> None:
    torch.manual_seed(RECIPE.seed)
    before = evaluate_localiser(build_localiser(CONFIG), data)
    log = io.StringIO()
    model, losses = train_localiser(RECIPE, data, stream=log)
    after = evaluate_localiser(model, data)
    assert len(losses) == RECIPE.steps
    assert "[localise] step 10/70" in log.getvalue() and "ETA" in log.getvalue()
    assert after["slices"] == before["slices"] > 100
    assert after["mean_mm"] <= 0.5 * before["mean_mm"], (before, after)
    assert after["confidence_spine"] > 0.9
    # same seed, same run: the first steps of a shorter run repeat the loss sequence exactly
    _, again = train_localiser(replace(RECIPE, steps=10), data, stream=io.StringIO())
    assert again == losses[:10]
