"""Percentile bootstrap confidence intervals for the image-level classification metrics.

Images are resampled with replacement. Each resample is represented by how many times it
draws every image (a row of counts), so AUROC, sensitivity, specificity and F1 of all the
resamples in a chunk are computed with a few array operations instead of one sort each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from spinexr.training.metrics.classification import auroc, binary_metrics, validate_binary

log = logging.getLogger(__name__)

METRICS = ("auroc", "sensitivity", "specificity", "f1")
"""Metrics that `bootstrap_ci` returns, in order."""

_CHUNK_ELEMENTS = 500_000
"""Resamples × images handled per vectorised chunk (bounds memory to a few MB per array).
The draws do not depend on it: consecutive ``Generator.integers`` calls continue one stream."""


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap confidence interval.

    Attributes
    ----------
    point : float
        The metric on the full sample.
    low, high : float
        Percentile interval bounds (NaN if no resample had the metric defined).
    n_resamples_used : int
        Resamples on which the metric was defined (AUROC needs both classes, sensitivity a
        positive, specificity a negative, F1 a positive or a predicted positive).
    n_resamples : int
        Resamples drawn.
    """

    point: float
    low: float
    high: float
    n_resamples_used: int
    n_resamples: int

    @property
    def n_skipped(self) -> int:
        """Resamples on which the metric was undefined and which were left out."""
        return self.n_resamples - self.n_resamples_used


def bootstrap_ci(
    y_true: npt.ArrayLike,
    scores: npt.ArrayLike,
    threshold: float,
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Interval]:
    """Bootstrap AUROC, sensitivity, specificity and F1 at a threshold.

    Parameters
    ----------
    y_true : array_like
        Image labels, 1 = abnormal, 0 = normal. Both classes must be present.
    scores : array_like
        Image scores, higher = more abnormal.
    threshold : float
        Operating threshold (positive iff ``score >= threshold``), e.g. the validation c*.
    n_resamples : int, optional
        Number of bootstrap resamples (each the size of the data).
    seed : int, optional
        Seed of the ``numpy.random.Generator``; the same seed gives identical intervals.
        Resample ``r`` draws the images
        ``numpy.random.default_rng(seed).integers(0, n, size=(n_resamples, n))[r]``.
    confidence : float, optional
        Coverage of the two-sided percentile interval, in (0, 1).

    Returns
    -------
    dict of str to Interval
        Keys ``auroc``, ``sensitivity``, ``specificity``, ``f1``; bounds are the
        ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles (numpy's default
        linear interpolation) of the resampled values. Resamples on which a
        metric is undefined (e.g. a single class for AUROC) are skipped for that metric and
        counted in `Interval.n_resamples_used`.

    Raises
    ------
    ValueError
        If the inputs are invalid, only one class is present, ``n_resamples < 1`` or
        `confidence` is outside (0, 1).
    """
    y, s = validate_binary(y_true, scores)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    point_auc = auroc(y, s)  # raises if only one class is present
    point = binary_metrics(y, s, threshold)

    n = y.size
    order = np.argsort(-s, kind="mergesort")
    y_sorted = y[order]
    s_sorted = s[order]
    # Start of every run of tied scores in decreasing order: AUROC only depends on how many
    # positives and negatives each tie group holds in the resample.
    starts = np.flatnonzero(np.concatenate([[True], np.diff(s_sorted) != 0]))
    pred_sorted = s_sorted >= threshold

    rng = np.random.default_rng(seed)
    values = np.empty((len(METRICS), n_resamples))
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for first in range(0, n_resamples, chunk):
        k = min(chunk, n_resamples - first)
        draws = rng.integers(0, n, size=(k, n))
        # counts[r, i]: how many times resample r drew image i; then columns in score order.
        flat = (draws + (np.arange(k) * n)[:, None]).ravel()
        counts = np.bincount(flat, minlength=k * n).reshape(k, n)[:, order]
        values[:, first : first + k] = _chunk_metrics(counts, y_sorted, pred_sorted, starts)
    alpha = (1.0 - confidence) / 2.0
    points = {
        "auroc": point_auc,
        "sensitivity": point["sensitivity"],
        "specificity": point["specificity"],
        "f1": point["f1"],
    }
    out: dict[str, Interval] = {}
    for name, row in zip(METRICS, values, strict=True):
        ok = row[~np.isnan(row)]
        if ok.size:
            low, high = np.quantile(ok, [alpha, 1.0 - alpha])
        else:
            low = high = np.nan
        out[name] = Interval(
            float(points[name]), float(low), float(high), int(ok.size), n_resamples
        )
    skipped = out["auroc"].n_skipped
    if skipped:
        log.info(
            "bootstrap: %d of %d resamples had a single class (skipped for AUROC)",
            skipped,
            n_resamples,
        )
    return out


def _chunk_metrics(
    counts: npt.NDArray[np.int64],
    y_sorted: npt.NDArray[np.bool_],
    pred_sorted: npt.NDArray[np.bool_],
    starts: npt.NDArray[np.intp],
) -> npt.NDArray[np.float64]:
    """Metrics of a chunk of resamples given as draw counts (columns in decreasing score).

    Returns an array (4, resamples) in `METRICS` order, NaN where a metric is undefined.
    """
    pos = counts * y_sorted
    neg = counts - pos
    pos_g = np.add.reduceat(pos, starts, axis=1).astype(np.float64)
    neg_g = np.add.reduceat(neg, starts, axis=1).astype(np.float64)
    n_pos = pos_g.sum(axis=1)
    n_neg = neg_g.sum(axis=1)
    # Mann-Whitney: for every negative, the positives scoring higher plus half the ties.
    higher = np.cumsum(pos_g, axis=1) - pos_g
    u = (neg_g * (higher + 0.5 * pos_g)).sum(axis=1)
    tp = pos[:, pred_sorted].sum(axis=1).astype(np.float64)
    fp = neg[:, pred_sorted].sum(axis=1).astype(np.float64)
    fn = n_pos - tp
    tn = n_neg - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack(
            [
                u / (n_pos * n_neg),
                tp / n_pos,
                tn / n_neg,
                2 * tp / (2 * tp + fp + fn),
            ]
        )
