"""Training and judging the benign / malignant classifier on phantom cases (small, CPU)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from spinexr.training.ct.characterise_train import (
    CharacteriserRecipe,
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
    figures = judge(model, cases)
    assert figures["slice"]["n"] == 20 and figures["patient"]["n"] == 4
    assert 0.0 <= figures["patient"]["accuracy"] <= 1.0
    assert figures["patient"]["auroc"] is not None
