"""AUROC, ROC curve, Youden threshold and the 2×2 table: hand-computed cases and identities."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spinexr.training.metrics import auroc, binary_metrics, roc_curve, youden_threshold

# y = [0, 0, 1, 1], scores = [0.1, 0.4, 0.4, 0.8]. Positive/negative pairs:
# (0.4 vs 0.1) = 1, (0.4 vs 0.4) tie = 1/2, (0.8 vs 0.1) = 1, (0.8 vs 0.4) = 1 → 3.5 / 4.
TIE_Y = [0, 0, 1, 1]
TIE_S = [0.1, 0.4, 0.4, 0.8]


def test_auroc_with_a_tie_counts_it_half() -> None:
    assert auroc(TIE_Y, TIE_S) == pytest.approx(0.875, abs=1e-15)


def test_auroc_extremes_and_constant_scores() -> None:
    y = [0, 1, 0, 1, 1]
    assert auroc(y, [0.1, 0.9, 0.2, 0.8, 0.7]) == 1.0
    assert auroc(y, [0.9, 0.1, 0.8, 0.2, 0.3]) == 0.0
    assert auroc(y, [0.5] * 5) == 0.5
    assert auroc(np.array(y, dtype=bool), [0.1, 0.9, 0.2, 0.8, 0.7]) == 1.0


def test_auroc_equals_trapezoidal_area_and_pairwise_count() -> None:
    rng = np.random.default_rng(7)
    y = rng.random(300) < 0.4
    s = np.round(rng.normal(y * 0.8, 1.0), 1)  # many ties
    fpr, tpr, _ = roc_curve(y, s)
    pos, neg = s[y], s[~y]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auroc(y, s) == pytest.approx(pairs / (pos.size * neg.size), abs=1e-12)
    assert auroc(y, s) == pytest.approx(np.trapezoid(tpr, fpr), abs=1e-12)


def test_auroc_single_class_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"only one class.*all 3 labels are positive"):
        auroc([1, 1, 1], [0.2, 0.5, 0.9])
    with pytest.raises(ValueError, match=r"only one class.*negative"):
        auroc([0, 0], [0.2, 0.5])


@pytest.mark.parametrize(
    ("y", "s", "message"),
    [
        ([0, 2, 1], [0.1, 0.2, 0.3], "only 0 and 1; found 2 at index 1"),
        ([0, 1, 1], [0.1, float("nan"), 0.3], "finite; found nan at index 1"),
        ([0, 1], [0.1, 0.2, 0.3], "2 values but scores has 3"),
        ([], [], "empty"),
        ([[0, 1]], [[0.1, 0.2]], "must be 1-D"),
    ],
)
def test_invalid_inputs_are_rejected(y: list[object], s: list[object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        auroc(y, s)


def test_roc_curve_small_case() -> None:
    # Thresholds inf, 0.8, 0.4, 0.1: predicted positives {}, {0.8}, {0.4, 0.4, 0.8}, all.
    fpr, tpr, thr = roc_curve(TIE_Y, TIE_S)
    np.testing.assert_array_equal(thr, [np.inf, 0.8, 0.4, 0.1])
    np.testing.assert_array_equal(fpr, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(tpr, [0.0, 0.5, 1.0, 1.0])


def test_youden_threshold_unique_maximum() -> None:
    # P = 4, N = 3. J per threshold (positive iff score >= c):
    #   c=0.7: sens 1/4, spec 3/3 → 0.25      c=0.4: 3/4, 2/3 → 0.417
    #   c=0.6: 2/4, 3/3 → 0.50                c=0.3: 4/4, 2/3 → 0.667  ← maximum
    #   c=0.5: 2/4, 2/3 → 0.167               c=0.2: 1, 1/3 → 0.333;  c=0.1: 1, 0 → 0
    y = [0, 0, 1, 1, 0, 1, 1]
    s = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert youden_threshold(y, s) == 0.3


def test_youden_threshold_ties_take_the_largest_threshold() -> None:
    # P = N = 3. c=0.9: 1/3, 1 → 1/3; c=0.7: 2/3, 1 → 2/3; c=0.6: 2/3, 2/3 → 1/3;
    # c=0.4: 1, 2/3 → 2/3; c=0.3: 1, 1/3 → 1/3; c=0.1: 1, 0 → 0. Tie 0.7 / 0.4 → 0.7.
    y = [0, 0, 0, 1, 1, 1]
    s = [0.1, 0.3, 0.6, 0.4, 0.7, 0.9]
    assert youden_threshold(y, s) == 0.7


def test_youden_threshold_maximises_j_by_brute_force() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(200) < 0.5
    s = np.round(rng.normal(y * 1.0, 1.0), 2)
    c = youden_threshold(y, s)

    def j(t: float) -> float:
        m = binary_metrics(y, s, t)
        return m["sensitivity"] + m["specificity"] - 1

    best = max(j(t) for t in np.unique(s))
    assert j(c) == pytest.approx(best, abs=1e-12)
    assert all(j(t) < best - 1e-12 for t in np.unique(s) if t > c)


def test_binary_metrics_hand_computed_table() -> None:
    # 9 positives: 6 scored 0.9 (TP), 3 scored 0.1 (FN); 11 negatives: 2 at 0.9 (FP), 9 at 0.1.
    # sens 6/9, spec 9/11, ppv 6/8, npv 9/12, F1 = 2·6/(2·6 + 2 + 3) = 12/17, acc 15/20.
    y = [1] * 9 + [0] * 11
    s = [0.9] * 6 + [0.1] * 3 + [0.9] * 2 + [0.1] * 9
    m = binary_metrics(y, s, 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (6, 2, 9, 3)
    assert m["sensitivity"] == pytest.approx(6 / 9)
    assert m["specificity"] == pytest.approx(9 / 11)
    assert m["ppv"] == pytest.approx(0.75)
    assert m["npv"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(12 / 17)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["threshold"] == 0.5


def test_binary_metrics_threshold_is_inclusive() -> None:
    m = binary_metrics([1, 0], [0.5, 0.4999], 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1, 0, 1, 0)


def test_binary_metrics_zero_denominators_are_nan() -> None:
    # No positives and nothing predicted positive: tp = fp = fn = 0.
    m = binary_metrics([0, 0, 0], [0.1, 0.2, 0.3], 0.9)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (0, 0, 3, 0)
    assert math.isnan(m["sensitivity"])
    assert math.isnan(m["ppv"])
    assert math.isnan(m["f1"])
    assert m["specificity"] == 1.0
    assert m["npv"] == 1.0
    assert m["accuracy"] == 1.0
    with pytest.raises(ValueError, match="threshold is NaN"):
        binary_metrics([0, 1], [0.1, 0.2], float("nan"))
