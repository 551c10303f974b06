"""Image-level classification metrics: AUROC, ROC curve, Youden threshold, 2×2 table.

All functions take ``y_true`` (1 = abnormal, 0 = normal; bools accepted) and ``scores``
(higher = more abnormal) as 1-D array-likes of the same length. An image is predicted
positive iff ``score >= threshold``, the convention of scikit-learn's ``roc_curve``.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def validate_binary(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[BoolArray, FloatArray]:
    """Check and convert labels and scores.

    Parameters
    ----------
    y_true : array_like
        Labels, each 0 or 1 (or bool).
    scores : array_like
        Finite real scores, same length as `y_true`.

    Returns
    -------
    labels : numpy.ndarray of bool
    scores : numpy.ndarray of float64

    Raises
    ------
    ValueError
        If either input is not 1-D, they differ in length, they are empty, a label is not
        0/1 or a score is not finite.
    """
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"y_true and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values but scores has {s.size}")
    if y.size == 0:
        raise ValueError("y_true and scores are empty")
    if y.dtype != np.bool_:
        bad = ~np.isin(y, (0, 1))
        if bad.any():
            raise ValueError(
                f"y_true must contain only 0 and 1; found {y[bad][0].item()!r} at index "
                f"{int(np.flatnonzero(bad)[0])}"
            )
    if not np.isfinite(s).all():
        i = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ValueError(f"scores must be finite; found {s[i]} at index {i}")
    return y.astype(np.bool_), s


def _require_both_classes(y: BoolArray, what: str) -> tuple[int, int]:
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        present = "positive (1)" if n_pos else "negative (0)"
        raise ValueError(
            f"{what} is undefined when only one class is present: all {y.size} labels are {present}"
        )
    return n_pos, n_neg


def auroc(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U statistic).

    Equals the probability that a random positive scores higher than a random negative, a
    tie counting one half (average ranks), so it is identical to the trapezoidal area under
    `roc_curve`.

    Parameters
    ----------
    y_true : array_like
        Labels, 1 = positive (abnormal), 0 = negative.
    scores : array_like
        Scores, higher = more likely positive.

    Returns
    -------
    float
        AUROC in [0, 1].

    Raises
    ------
    ValueError
        If only one class is present, or the inputs are invalid (see `validate_binary`).
    """
    y, s = validate_binary(y_true, scores)
    n_pos, n_neg = _require_both_classes(y, "AUROC")
    ranks = rankdata(s, method="average")
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def roc_curve(
    y_true: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """ROC curve over every distinct score.

    Same semantics as ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``: the
    thresholds are the distinct scores in decreasing order, preceded by ``inf`` (nothing
    predicted positive), and point ``i`` predicts positive iff ``score >= thresholds[i]``.

    Parameters
    ----------
    y_true : array_like
        Labels, 1 = positive, 0 = negative.
    scores : array_like
        Scores, higher = more likely positive.

    Returns
    -------
    fpr, tpr, thresholds : numpy.ndarray
        False and true positive rates (both start at 0 and end at 1) and the thresholds.

    Raises
    ------
    ValueError
        If only one class is present, or the inputs are invalid.
    """
    y, s = validate_binary(y_true, scores)
    n_pos, n_neg = _require_both_classes(y, "The ROC curve")
    thresholds, tp, fp = _counts_at_distinct_scores(y, s)
    fpr = np.concatenate([[0.0], fp / n_neg])
    tpr = np.concatenate([[0.0], tp / n_pos])
    return fpr, tpr, np.concatenate([[np.inf], thresholds])


def _counts_at_distinct_scores(
    y: BoolArray, s: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Distinct scores (decreasing) and the TP/FP counts when thresholding at each."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    # Last index of every run of equal scores: the counts there include the whole tie.
    last = np.flatnonzero(np.diff(s_sorted) != 0)
    last = np.append(last, s_sorted.size - 1)
    tp = np.cumsum(y_sorted, dtype=np.float64)[last]
    fp = (last + 1.0) - tp
    return s_sorted[last], tp, fp


def youden_threshold(y_true: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Operating threshold c* maximising Youden's J = sensitivity + specificity − 1.

    The candidates are the distinct scores (positive iff ``score >= c``). When several
    thresholds reach the maximum J, the **largest** of them is returned: the first maximiser
    in the decreasing-threshold order of `roc_curve`, which is what ``argmax(tpr - fpr)``
    over scikit-learn's curve (as in the reference code) selects.

    Parameters
    ----------
    y_true : array_like
        Labels, 1 = positive, 0 = negative (in the method: the validation split).
    scores : array_like
        Scores, higher = more likely positive.

    Returns
    -------
    float
        The threshold c* (one of the scores).

    Raises
    ------
    ValueError
        If only one class is present, or the inputs are invalid.
    """
    y, s = validate_binary(y_true, scores)
    n_pos, n_neg = _require_both_classes(y, "Youden's J")
    thresholds, tp, fp = _counts_at_distinct_scores(y, s)
    # J = tp/P - fp/N, compared in exact integer arithmetic (× P·N) so ties are exact ties.
    j = tp.astype(np.int64) * n_neg - fp.astype(np.int64) * n_pos
    return float(thresholds[int(np.argmax(j))])


class BinaryMetrics(TypedDict):
    """2×2 table at a threshold and the rates derived from it.

    A rate whose denominator is zero is NaN (e.g. sensitivity without positives, ppv when
    nothing is predicted positive, f1 when there are neither positives nor predicted
    positives).
    """

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: float
    specificity: float
    ppv: float
    npv: float
    f1: float
    accuracy: float


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else float("nan")


def binary_metrics(y_true: npt.ArrayLike, scores: npt.ArrayLike, threshold: float) -> BinaryMetrics:
    """Confusion table and derived metrics, predicting positive iff ``score >= threshold``.

    Parameters
    ----------
    y_true : array_like
        Labels, 1 = positive, 0 = negative.
    scores : array_like
        Scores, higher = more likely positive.
    threshold : float
        Operating threshold (e.g. from `youden_threshold`).

    Returns
    -------
    BinaryMetrics
        ``sensitivity = tp/(tp+fn)``, ``specificity = tn/(tn+fp)``, ``ppv = tp/(tp+fp)``,
        ``npv = tn/(tn+fn)``, ``f1 = 2tp/(2tp+fp+fn)``, ``accuracy = (tp+tn)/n``; NaN where
        the denominator is 0. Unlike AUROC, a single class present is allowed.

    Raises
    ------
    ValueError
        If the inputs are invalid or the threshold is NaN.
    """
    y, s = validate_binary(y_true, scores)
    if np.isnan(threshold):
        raise ValueError("threshold is NaN")
    pred = s >= threshold
    tp = int(np.count_nonzero(pred & y))
    fp = int(np.count_nonzero(pred & ~y))
    fn = int(np.count_nonzero(~pred & y))
    tn = int(y.size - tp - fp - fn)
    return BinaryMetrics(
        threshold=float(threshold),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        sensitivity=_ratio(tp, tp + fn),
        specificity=_ratio(tn, tn + fp),
        ppv=_ratio(tp, tp + fp),
        npv=_ratio(tn, tn + fn),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        accuracy=(tp + tn) / y.size,
    )
