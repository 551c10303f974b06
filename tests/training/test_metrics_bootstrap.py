"""Bootstrap intervals: same numbers as a plain per-resample loop, reproducible, sensible."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from spinexr.training.metrics import METRICS, Interval, auroc, binary_metrics, bootstrap_ci


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.45
    s = np.round(1 / (1 + np.exp(-rng.normal(y * 1.5 - 0.5, 1.0))), 2)  # ties on purpose
    return y, s


def _loop_reference(
    y: np.ndarray, s: np.ndarray, threshold: float, n_resamples: int, seed: int, confidence: float
) -> dict[str, tuple[float, float, int]]:
    """One resample at a time with the public functions (the documented draw layout)."""
    draws = np.random.default_rng(seed).integers(0, y.size, size=(n_resamples, y.size))
    values: dict[str, list[float]] = {m: [] for m in METRICS}
    for idx in draws:
        yr, sr = y[idx], s[idx]
        if 0 < yr.sum() < yr.size:
            values["auroc"].append(auroc(yr, sr))
        m = binary_metrics(yr, sr, threshold)
        for name in ("sensitivity", "specificity", "f1"):
            if not math.isnan(m[name]):
                values[name].append(m[name])
    a = (1 - confidence) / 2
    out = {}
    for name, v in values.items():
        low, high = np.quantile(v, [a, 1 - a])
        out[name] = (float(low), float(high), len(v))
    return out


@pytest.mark.parametrize(("n", "seed", "confidence"), [(60, 0, 0.95), (25, 5, 0.9)])
def test_matches_a_loop_over_resamples(n: int, seed: int, confidence: float) -> None:
    y, s = _data(n, seed)
    thr = 0.5
    got = bootstrap_ci(y, s, thr, n_resamples=400, seed=seed, confidence=confidence)
    ref = _loop_reference(y, s, thr, 400, seed, confidence)
    point = binary_metrics(y, s, thr)
    assert got["auroc"].point == auroc(y, s)
    for name in ("sensitivity", "specificity", "f1"):
        assert got[name].point == point[name]
    for name in METRICS:
        low, high, used = ref[name]
        assert got[name].low == pytest.approx(low, abs=1e-12), name
        assert got[name].high == pytest.approx(high, abs=1e-12), name
        assert got[name].n_resamples_used == used, name
        assert got[name].n_resamples == 400


def test_single_class_resamples_are_skipped_and_counted() -> None:
    # One positive among 4 images: a resample misses it with probability (3/4)^4 ≈ 0.32.
    y = np.array([1, 0, 0, 0])
    s = np.array([0.9, 0.2, 0.6, 0.1])
    got = bootstrap_ci(y, s, 0.5, n_resamples=2000, seed=1)
    ref = _loop_reference(y, s, 0.5, 2000, 1, 0.95)
    assert got["auroc"].n_resamples_used == ref["auroc"][2]
    assert 0.2 < got["auroc"].n_skipped / 2000 < 0.45
    # AUROC skips resamples without a positive (sensitivity undefined) and those made of the
    # positive only, (1/4)^4 ≈ 0.4% (specificity undefined).
    assert got["sensitivity"].n_resamples_used == ref["sensitivity"][2]
    assert got["specificity"].n_resamples_used == ref["specificity"][2]
    assert 0 < got["specificity"].n_skipped < 30
    assert got["auroc"].n_skipped == got["sensitivity"].n_skipped + got["specificity"].n_skipped


def test_same_seed_same_result_other_seed_differs() -> None:
    y, s = _data(300, 2)
    a = bootstrap_ci(y, s, 0.5, n_resamples=500, seed=11)
    b = bootstrap_ci(y, s, 0.5, n_resamples=500, seed=11)
    c = bootstrap_ci(y, s, 0.5, n_resamples=500, seed=12)
    assert a == b
    assert a != c
    assert a["auroc"].point == c["auroc"].point


def test_interval_contains_point_and_narrows_with_more_data() -> None:
    small = bootstrap_ci(*_data(150, 4), 0.5, n_resamples=1000, seed=0)
    large = bootstrap_ci(*_data(2400, 4), 0.5, n_resamples=1000, seed=0)
    for name in METRICS:
        for r in (small, large):
            assert r[name].low <= r[name].point <= r[name].high, name
            assert r[name].low < r[name].high, name
        # Width shrinks roughly like 1/sqrt(n): 16× the data, about a quarter of the width.
        assert large[name].high - large[name].low < 0.5 * (small[name].high - small[name].low)


def test_interval_is_frozen() -> None:
    i = Interval(0.8, 0.7, 0.9, 10, 10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        i.point = 0.1  # type: ignore[misc]


def test_invalid_arguments() -> None:
    y, s = _data(20, 0)
    with pytest.raises(ValueError, match="only one class"):
        bootstrap_ci([1, 1, 1], [0.1, 0.2, 0.3], 0.5, n_resamples=10)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(y, s, 0.5, confidence=1.0)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(y, s, 0.5, n_resamples=0)
