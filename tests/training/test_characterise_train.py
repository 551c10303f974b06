"""Training and judging the benign / malignant classifier on phantom cases (small, CPU)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from spinexr.training.ct.characterise_train import (
    CharacteriserRecipe,
    figures_of,
    format_table,
    judge,
    make_case,
    make_cases,
    train_characteriser,
)


@pytest.fixture(scope="module")
def cases():
    return make_cases(4, seed=3, progress=False)


def test_cases_alternate_truth_and_carry_lis_input(cases) -> None:
    assert [c.malignant for c in cases] == [True, False, True, False]
    assert len({c.patient for c in cases}) == 4
    for c in cases:
        assert c.inputs.shape == (5, 3, 64, 64)
        assert np.isfinite(c.inputs).all()
    again = make_case(300_009, malignant=True)
    assert np.array_equal(again.inputs, cases[0].inputs) and again.level == cases[0].level


@pytest.mark.slow
def test_training_is_reproducible_and_keeps_the_best_epoch(cases) -> None:
    recipe = CharacteriserRecipe(epochs=3, patience=5, batch=8, val_fraction=0.25, seed=1)
    log = io.StringIO()
    model, history = train_characteriser(cases, recipe, stream=log)
    assert len(history.train_loss) == len(history.val_loss) == 3
    assert history.val_loss[history.best_epoch - 1] == min(history.val_loss)
    assert "[li2021] epoch 3/3" in log.getvalue() and "ETA" in log.getvalue()
    _, again = train_characteriser(cases, recipe, stream=io.StringIO())
    assert again.train_loss == history.train_loss
    figures = judge(model, cases, n_bootstrap=50)
    assert figures["slice"]["n"] == 20 and figures["patient"]["n"] == 4
    assert 0.0 <= figures["patient"]["accuracy"]["value"] <= 1.0
    assert figures["patient"]["auroc"]["value"] is not None
    assert "| patient | 4 |" in format_table(figures, "test")


def test_figures_follow_the_max_slice_rule() -> None:
    truth = [True, True, False, False]
    probs = [[0.2, 0.7, 0.4], [0.1, 0.3, 0.2], [0.6, 0.1, 0.1], [0.2, 0.2, 0.3]]
    f = figures_of(truth, probs, threshold=0.5, n_bootstrap=0)
    # per patient: 0.7 (TP), 0.3 (FN), 0.6 (FP), 0.3 (TN)
    assert f["patient"]["sensitivity"]["value"] == 0.5
    assert f["patient"]["specificity"]["value"] == 0.5
    assert f["patient"]["accuracy"]["value"] == 0.5
    # per slice: 1 of 6 malignant slices called, 5 of 6 benign slices not called
    assert f["slice"]["n"] == 12
    assert f["slice"]["sensitivity"]["value"] == pytest.approx(1 / 6)
    assert f["slice"]["specificity"]["value"] == pytest.approx(5 / 6)
    assert f["patient"]["auroc"]["value"] == 0.625  # (1 + 1 + 0 + 0.5) / 4 pairs
