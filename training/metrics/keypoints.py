"""Vertebra keypoint metrics: matching, Pisov et al.'s Tables 1 and 2, heights, grades, levels.

Conventions (stated once, used everywhere below):

- **Matching.** Per image, predicted vertebrae are matched one-to-one to the annotated ones by
  the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) maximising the summed IoU
  of the axis-aligned boxes of the six keypoints, over the pairs with IoU > 0.5 only; pairs at
  or below the threshold are never matched. Scores do not enter: the model's output after its
  own score threshold and non-maximum suppression is evaluated as it is. A matched prediction
  is a true positive, an unmatched prediction a false positive, an unmatched annotation a miss.
- **Centre.** The vertebra centre is the mean of its six keypoints (as
  `spinexr.pipeline.vertebrae.objects.DetectedObject.centre`); the localisation error is the
  Euclidean distance between predicted and annotated centres in mm, ``(dx · column_mm,
  dy · row_mm)``.
- **Spacing.** Figures in mm (centre error, heights) use only images with a spacing; images
  without one are counted and still count for detection, Genant indices (a ratio, computed
  in pixels there) and levels.
- **Genant.** G of annotation and prediction from `spinexr.pipeline.vertebrae.genant`
  (heights in mm where the image has a spacing). Table 2 labels a vertebra positive when its
  annotated G ≤ the cut-off (the paper's 0.80 "at least mild", 0.74 "at least moderate"); the
  score is ``1 − predicted G`` and the operating point predicts positive when the predicted
  G ≤ the same cut-off. Vertebra level: matched vertebrae. Patient (= study) level: the lowest
  annotated G of the study's vertebrae against the lowest predicted G of its predicted
  vertebrae (all of them, matched or not; a study without predictions scores G = 1, "no
  fracture found"); studies without annotated vertebrae are left out.
- **Bootstrap.** Studies are resampled with replacement (a study's images and vertebrae travel
  together); every figure with an interval is a function of per-study weights, so the point
  estimate is the same function with every weight 1. Percentile intervals as in
  `spinexr.training.metrics.bootstrap`.

Library code: numpy and scipy only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

from spinexr.pipeline.vertebrae.genant import (
    DEFAULT_CUTOFFS,
    HEIGHT_NAMES,
    PAPER_AT_LEAST_MILD,
    PAPER_AT_LEAST_MODERATE,
    GenantCutoffs,
    GenantGrade,
    genant_index,
    grade,
    heights,
)
from spinexr.training.metrics.bootstrap import Interval
from spinexr.training.metrics.detection import coco_iou

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

IOU_THRESHOLD = 0.5
"""A prediction matches an annotation when the IoU of their keypoint boxes exceeds this."""

PAPER_CUTOFFS: dict[str, float] = {
    "at_least_mild": PAPER_AT_LEAST_MILD,
    "at_least_moderate": PAPER_AT_LEAST_MODERATE,
}
"""Table 2's binary tasks: positive when G ≤ the cut-off."""

FRACTURED_G = PAPER_AT_LEAST_MODERATE
"""Table 1's grey columns: "moderately and severely fractured" vertebrae, annotated G ≤ 0.74."""

GRADES: tuple[GenantGrade, ...] = tuple(GenantGrade)
"""Rows and columns of the grade confusion matrix, normal to severe."""

_CHUNK_ELEMENTS = 2_000_000
"""Resamples × items expanded at once when an AUROC needs per-item weights."""


@dataclass(frozen=True, eq=False)
class ImageKeypoints:
    """Annotated and predicted vertebrae of one image.

    Parameters
    ----------
    study, image : str
        Identifiers; the study is the patient-level unit and the unit the bootstrap resamples.
    spacing_mm : tuple of float or None
        ``(row_mm, column_mm)``; None when the image has no spacing (no mm figures from it).
    truth : array_like
        ``(N, 6, 2)`` annotated vertebrae, keypoints in pixels.
    predicted : array_like
        ``(M, 6, 2)`` predicted vertebrae.
    scores : array_like
        ``(M,)`` prediction confidences (kept for the record; matching does not use them).
    truth_levels : sequence of str or None, optional
        Annotated level per annotated vertebra (None where not named); empty = none named.
    predicted_levels : sequence of str or None, optional
        Level the level naming gave each predicted vertebra (None where not established);
        None when no level naming ran.
    truth_heights_mm, predicted_heights_mm : array_like, optional
        ``(N, 3)`` / ``(M, 3)`` heights in mm measured elsewhere (on CT: in 3D, between
        the keypoints mapped back to the patient); they replace the heights from the 2D
        keypoints and the spacing for G and the height figures.
    truth_centres_mm, predicted_centres_mm : array_like, optional
        ``(N, D)`` / ``(M, D)`` centres in mm in any common frame (on CT: LPS); they replace
        the 2D centres for the localisation error.
    """

    study: str
    image: str
    spacing_mm: tuple[float, float] | None
    truth: FloatArray
    predicted: FloatArray
    scores: FloatArray
    truth_levels: tuple[str | None, ...] = ()
    predicted_levels: tuple[str | None, ...] | None = None
    truth_heights_mm: FloatArray | None = None
    predicted_heights_mm: FloatArray | None = None
    truth_centres_mm: FloatArray | None = None
    predicted_centres_mm: FloatArray | None = None

    def __post_init__(self) -> None:
        truth = _keypoint_stack(self.truth, f"image {self.image}: truth")
        predicted = _keypoint_stack(self.predicted, f"image {self.image}: predicted")
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if scores.shape != (len(predicted),):
            raise ValueError(
                f"image {self.image}: {len(predicted)} predictions but {scores.size} scores"
            )
        if self.spacing_mm is not None and not (
            len(self.spacing_mm) == 2 and all(math.isfinite(v) and v > 0 for v in self.spacing_mm)
        ):
            raise ValueError(f"image {self.image}: spacing must be two positive numbers")
        levels = tuple(self.truth_levels) or (None,) * len(truth)
        if len(levels) != len(truth):
            raise ValueError(
                f"image {self.image}: {len(truth)} annotated vertebrae but {len(levels)} levels"
            )
        if self.predicted_levels is not None and len(self.predicted_levels) != len(predicted):
            raise ValueError(
                f"image {self.image}: {len(predicted)} predictions but "
                f"{len(self.predicted_levels)} predicted levels"
            )
        object.__setattr__(self, "truth", truth)
        object.__setattr__(self, "predicted", predicted)
        object.__setattr__(self, "scores", scores)
        for name, n in (
            ("truth_heights_mm", len(truth)),
            ("predicted_heights_mm", len(predicted)),
            ("truth_centres_mm", len(truth)),
            ("predicted_centres_mm", len(predicted)),
        ):
            value = getattr(self, name)
            if value is None:
                continue
            array = np.asarray(value, dtype=np.float64).reshape(n, -1)
            if name.endswith("heights_mm") and array.shape[1] != 3:
                raise ValueError(f"image {self.image}: {name} needs three heights per vertebra")
            object.__setattr__(self, name, array)
        object.__setattr__(self, "truth_levels", levels)
        if self.predicted_levels is not None:
            object.__setattr__(self, "predicted_levels", tuple(self.predicted_levels))


def _keypoint_stack(points: npt.ArrayLike, what: str) -> FloatArray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 6, 2))
    if arr.ndim != 3 or arr.shape[1:] != (6, 2):
        raise ValueError(f"{what}: expected shape (N, 6, 2), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what}: keypoints must be finite")
    return arr


def keypoint_boxes(keypoints: npt.ArrayLike) -> FloatArray:
    """Axis-aligned boxes of keypoint sets.

    Parameters
    ----------
    keypoints : array_like
        ``(N, 6, 2)`` keypoints.

    Returns
    -------
    numpy.ndarray
        ``(N, 4)`` boxes ``xmin, ymin, xmax, ymax``.
    """
    kp = _keypoint_stack(keypoints, "keypoints")
    return np.concatenate([kp.min(axis=1), kp.max(axis=1)], axis=1)


def match_vertebrae(
    truth: npt.ArrayLike, predicted: npt.ArrayLike, *, iou_threshold: float = IOU_THRESHOLD
) -> list[tuple[int, int]]:
    """Match predictions to annotations one-to-one (Hungarian on keypoint-box IoU).

    Parameters
    ----------
    truth : array_like
        ``(N, 6, 2)`` annotated vertebrae.
    predicted : array_like
        ``(M, 6, 2)`` predicted vertebrae.
    iou_threshold : float, optional
        Only pairs with IoU strictly above it can match.

    Returns
    -------
    list of (int, int)
        ``(truth index, prediction index)`` pairs, by truth index; the assignment maximises
        the summed IoU over the admissible pairs.
    """
    if not 0.0 <= iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
    t = keypoint_boxes(truth)
    p = keypoint_boxes(predicted)
    if len(t) == 0 or len(p) == 0:
        return []
    iou = coco_iou(t, p)
    gain = np.where(iou > iou_threshold, iou, 0.0)
    rows, cols = linear_sum_assignment(gain, maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if gain[r, c] > 0.0]


def centre_error_mm(
    truth: npt.ArrayLike, predicted: npt.ArrayLike, spacing_mm: tuple[float, float]
) -> float:
    """Distance in mm between the centres (keypoint means) of two vertebrae.

    Parameters
    ----------
    truth, predicted : array_like
        ``(6, 2)`` keypoints in pixels.
    spacing_mm : tuple of float
        ``(row_mm, column_mm)``.

    Returns
    -------
    float
        ``hypot(dx · column_mm, dy · row_mm)``.
    """
    d = np.asarray(predicted, dtype=np.float64).mean(axis=0) - np.asarray(
        truth, dtype=np.float64
    ).mean(axis=0)
    row_mm, col_mm = spacing_mm
    return math.hypot(float(d[0]) * col_mm, float(d[1]) * row_mm)


@dataclass(frozen=True, eq=False)
class MatchTable:
    """Everything the metrics use, after matching every image.

    Attributes
    ----------
    studies : tuple of str
        Distinct studies, in first-seen order; ``*_study`` arrays index into it.
    image_study : numpy.ndarray
        Study of each image.
    image_has_spacing : numpy.ndarray
        Whether each image has a spacing.
    image_levels_established : numpy.ndarray
        Whether level naming gave at least one predicted vertebra of the image a level
        (False everywhere when no naming ran).
    truth_study, truth_g, truth_matched : numpy.ndarray
        Per annotated vertebra: study, annotated G, whether a prediction matched it.
    predicted_study, predicted_g, predicted_matched : numpy.ndarray
        Per predicted vertebra: study, predicted G, whether it matched an annotation.
    pair_study, pair_g_true, pair_g_pred : numpy.ndarray
        Per matched pair: study and the two Genant indices.
    pair_centre_mm : numpy.ndarray
        Centre error in mm per pair (NaN on images without spacing).
    pair_heights_true, pair_heights_pred : numpy.ndarray
        ``(P, 3)`` anterior, middle, posterior heights in mm (NaN without spacing).
    pair_level_true, pair_level_pred : tuple
        Annotated and predicted level per pair (None where absent).
    levels_named : bool
        Whether level naming ran (predicted levels exist).
    """

    studies: tuple[str, ...]
    image_study: IntArray
    image_has_spacing: BoolArray
    image_levels_established: BoolArray
    truth_study: IntArray
    truth_g: FloatArray
    truth_matched: BoolArray
    predicted_study: IntArray
    predicted_g: FloatArray
    predicted_matched: BoolArray
    pair_study: IntArray
    pair_g_true: FloatArray
    pair_g_pred: FloatArray
    pair_centre_mm: FloatArray
    pair_heights_true: FloatArray
    pair_heights_pred: FloatArray
    pair_level_true: tuple[str | None, ...]
    pair_level_pred: tuple[str | None, ...]
    levels_named: bool

    @property
    def n_studies(self) -> int:
        """Number of studies."""
        return len(self.studies)


def match_images(
    images: Sequence[ImageKeypoints], *, iou_threshold: float = IOU_THRESHOLD
) -> MatchTable:
    """Match every image and collect the per-vertebra quantities the metrics need.

    Parameters
    ----------
    images : sequence of ImageKeypoints
        The evaluated images (each image once).
    iou_threshold : float, optional
        See `match_vertebrae`.

    Returns
    -------
    MatchTable
        The matched table.

    Raises
    ------
    ValueError
        If there are no images or an image appears twice.
    """
    if not images:
        raise ValueError("no images to evaluate")
    study_index: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    named = any(im.predicted_levels is not None for im in images)
    im_study: list[int] = []
    im_spacing: list[bool] = []
    im_levels: list[bool] = []
    t_study: list[int] = []
    t_g: list[float] = []
    t_matched: list[bool] = []
    p_study: list[int] = []
    p_g: list[float] = []
    p_matched: list[bool] = []
    pairs: list[tuple[int, float, float, float, tuple[float, ...], tuple[float, ...]]] = []
    lv_true: list[str | None] = []
    lv_pred: list[str | None] = []
    nan3 = (math.nan, math.nan, math.nan)
    for im in images:
        key = (im.study, im.image)
        if key in seen:
            raise ValueError(f"image {im.image} of study {im.study} appears twice")
        seen.add(key)
        s = study_index.setdefault(im.study, len(study_index))
        im_study.append(s)
        im_spacing.append(im.spacing_mm is not None)
        im_levels.append(
            im.predicted_levels is not None and any(v is not None for v in im.predicted_levels)
        )
        h_true = (
            [tuple(h) for h in im.truth_heights_mm]
            if im.truth_heights_mm is not None
            else [heights(kp, im.spacing_mm) for kp in im.truth]
        )
        h_pred = (
            [tuple(h) for h in im.predicted_heights_mm]
            if im.predicted_heights_mm is not None
            else [heights(kp, im.spacing_mm) for kp in im.predicted]
        )
        g_true = [genant_index(h) for h in h_true]
        g_pred = [genant_index(h) for h in h_pred]
        matches = match_vertebrae(im.truth, im.predicted, iou_threshold=iou_threshold)
        matched_t = {t for t, _ in matches}
        matched_p = {p for _, p in matches}
        t_study += [s] * len(im.truth)
        t_g += g_true
        t_matched += [i in matched_t for i in range(len(im.truth))]
        p_study += [s] * len(im.predicted)
        p_g += g_pred
        p_matched += [i in matched_p for i in range(len(im.predicted))]
        for t, p in matches:
            if im.truth_centres_mm is not None and im.predicted_centres_mm is not None:
                err = float(np.linalg.norm(im.truth_centres_mm[t] - im.predicted_centres_mm[p]))
                ht, hp = h_true[t], h_pred[p]
            elif im.spacing_mm is None:
                err, ht, hp = math.nan, nan3, nan3
            else:
                err = centre_error_mm(im.truth[t], im.predicted[p], im.spacing_mm)
                ht, hp = h_true[t], h_pred[p]
            pairs.append((s, g_true[t], g_pred[p], err, ht, hp))
            lv_true.append(im.truth_levels[t])
            lv_pred.append(None if im.predicted_levels is None else im.predicted_levels[p])

    def ints(v: list[int]) -> IntArray:
        return np.asarray(v, dtype=np.int64)

    def floats(v: Sequence[Any]) -> FloatArray:
        return np.asarray(v, dtype=np.float64)

    def bools(v: list[bool]) -> BoolArray:
        return np.asarray(v, dtype=np.bool_)

    return MatchTable(
        studies=tuple(study_index),
        image_study=ints(im_study),
        image_has_spacing=bools(im_spacing),
        image_levels_established=bools(im_levels),
        truth_study=ints(t_study),
        truth_g=floats(t_g),
        truth_matched=bools(t_matched),
        predicted_study=ints(p_study),
        predicted_g=floats(p_g),
        predicted_matched=bools(p_matched),
        pair_study=ints([p[0] for p in pairs]),
        pair_g_true=floats([p[1] for p in pairs]),
        pair_g_pred=floats([p[2] for p in pairs]),
        pair_centre_mm=floats([p[3] for p in pairs]),
        pair_heights_true=floats([p[4] for p in pairs]).reshape(-1, 3),
        pair_heights_pred=floats([p[5] for p in pairs]).reshape(-1, 3),
        pair_level_true=tuple(lv_true),
        pair_level_pred=tuple(lv_pred),
        levels_named=named,
    )


# --- Statistics as functions of per-study bootstrap weights ---------------------------------

Statistic = Callable[[FloatArray], FloatArray]
"""Maps study weights ``(k, S)`` to one value per row ``(k,)`` (NaN where undefined)."""


def _per_study(study: IntArray, values: npt.ArrayLike, n_studies: int) -> FloatArray:
    w = np.asarray(values, dtype=np.float64)
    return np.bincount(study, weights=w, minlength=n_studies).astype(np.float64)


def ratio_statistic(
    study: IntArray, numerator: npt.ArrayLike, denominator: npt.ArrayLike, n_studies: int
) -> Statistic:
    """Weighted ratio of per-item sums, ``Σ w·num / Σ w·den`` (a mean, a rate).

    Parameters
    ----------
    study : numpy.ndarray
        Study index of each item.
    numerator, denominator : array_like
        Per-item values summed above and below the line.
    n_studies : int
        Number of studies.

    Returns
    -------
    Statistic
        The ratio for each row of study weights (NaN where the denominator is 0).
    """
    num = _per_study(study, numerator, n_studies)
    den = _per_study(study, denominator, n_studies)

    def stat(w: FloatArray) -> FloatArray:
        with np.errstate(invalid="ignore", divide="ignore"):
            d = w @ den
            return np.where(d > 0, (w @ num) / np.where(d > 0, d, 1.0), np.nan)

    return stat


def mean_statistic(study: IntArray, values: npt.ArrayLike, n_studies: int) -> Statistic:
    """Weighted mean of the finite items (NaN items are left out).

    Parameters
    ----------
    study : numpy.ndarray
        Study index of each item.
    values : array_like
        Per-item values.
    n_studies : int
        Number of studies.

    Returns
    -------
    Statistic
        The mean for each row of study weights.
    """
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    return ratio_statistic(study[ok], v[ok], np.ones(int(ok.sum())), n_studies)


def weighted_auroc(y_true: BoolArray, scores: FloatArray, weights: FloatArray) -> FloatArray:
    """AUROC (Mann-Whitney, ties count one half) with item weights, one value per weight row.

    Parameters
    ----------
    y_true : numpy.ndarray
        ``(n,)`` labels.
    scores : numpy.ndarray
        ``(n,)`` scores, higher = more likely positive.
    weights : numpy.ndarray
        ``(k, n)`` non-negative weights (bootstrap draw counts; all ones = the plain AUROC).

    Returns
    -------
    numpy.ndarray
        ``(k,)`` AUROCs, NaN where a row has no positive or no negative weight.
    """
    order = np.argsort(-scores, kind="mergesort")
    y = y_true[order]
    s = scores[order]
    w = weights[:, order]
    if s.size == 0:
        return np.full(w.shape[0], np.nan)
    starts = np.flatnonzero(np.concatenate([[True], np.diff(s) != 0]))
    pos_g = np.add.reduceat(w * y, starts, axis=1)
    neg_g = np.add.reduceat(w * ~y, starts, axis=1)
    n_pos = pos_g.sum(axis=1)
    n_neg = neg_g.sum(axis=1)
    higher = np.cumsum(pos_g, axis=1) - pos_g
    u = (neg_g * (higher + 0.5 * pos_g)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: FloatArray = u / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), out, np.nan)


def auroc_statistic(study: IntArray, y_true: BoolArray, scores: FloatArray) -> Statistic:
    """AUROC of items weighted by the draw count of their study.

    Parameters
    ----------
    study : numpy.ndarray
        Study index of each item (for patient-level items, ``arange``).
    y_true : numpy.ndarray
        Item labels.
    scores : numpy.ndarray
        Item scores.

    Returns
    -------
    Statistic
        The AUROC for each row of study weights.
    """

    def stat(w: FloatArray) -> FloatArray:
        out = np.empty(w.shape[0])
        rows = max(1, _CHUNK_ELEMENTS // max(1, study.size))
        for first in range(0, w.shape[0], rows):
            block = w[first : first + rows]
            out[first : first + rows] = weighted_auroc(y_true, scores, block[:, study])
        return out

    return stat


def bootstrap_statistics(
    statistics: dict[str, Statistic],
    n_studies: int,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Interval]:
    """Point estimates and percentile intervals of statistics, resampling studies.

    Parameters
    ----------
    statistics : dict of str to Statistic
        What to estimate.
    n_studies : int
        Number of studies (columns of the weights).
    n_resamples : int, optional
        Resamples (each draws `n_studies` studies with replacement); 0 gives point
        estimates with NaN bounds.
    seed : int, optional
        Resample ``r`` draws the studies
        ``numpy.random.default_rng(seed).integers(0, n_studies, size=(n_resamples, n_studies))[r]``.
    confidence : float, optional
        Coverage of the two-sided interval.

    Returns
    -------
    dict of str to Interval
        Per statistic; resamples where it is undefined are skipped and counted.
    """
    if n_resamples < 0:
        raise ValueError(f"n_resamples must be at least 0, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    ones = np.ones((1, n_studies))
    weights = np.zeros((0, n_studies))
    if n_resamples:
        draws = np.random.default_rng(seed).integers(0, n_studies, size=(n_resamples, n_studies))
        flat = (draws + (np.arange(n_resamples) * n_studies)[:, None]).ravel()
        weights = (
            np.bincount(flat, minlength=n_resamples * n_studies)
            .reshape(n_resamples, n_studies)
            .astype(np.float64)
        )
    alpha = (1.0 - confidence) / 2.0
    out: dict[str, Interval] = {}
    for name, stat in statistics.items():
        point = float(stat(ones)[0])
        low = high = math.nan
        used = 0
        if n_resamples:
            values = stat(weights)
            ok = values[np.isfinite(values)]
            used = int(ok.size)
            if used:
                low, high = (float(v) for v in np.quantile(ok, [alpha, 1.0 - alpha]))
        out[name] = Interval(point, low, high, used, n_resamples)
    return out


# --- Results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlandAltman:
    """Agreement of predicted and annotated values (differences = predicted − annotated).

    Attributes
    ----------
    n : int
        Pairs.
    bias : float
        Mean difference.
    sd : float
        Standard deviation of the differences (ddof 1; NaN under two pairs).
    lower, upper : float
        Limits of agreement ``bias ∓ 1.96 sd``.
    """

    n: int
    bias: float
    sd: float
    lower: float
    upper: float


def bland_altman(predicted: npt.ArrayLike, truth: npt.ArrayLike) -> BlandAltman:
    """Bland-Altman bias and 95 % limits of agreement (non-finite pairs are left out).

    Parameters
    ----------
    predicted, truth : array_like
        Paired values.

    Returns
    -------
    BlandAltman
        Statistics of ``predicted − truth``.
    """
    d = (
        np.asarray(predicted, dtype=np.float64).ravel()
        - np.asarray(truth, dtype=np.float64).ravel()
    )
    d = d[np.isfinite(d)]
    n = int(d.size)
    bias = float(d.mean()) if n else math.nan
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    return BlandAltman(n, bias, sd, bias - 1.96 * sd, bias + 1.96 * sd)


def grade_confusion(
    g_true: npt.ArrayLike, g_pred: npt.ArrayLike, cutoffs: GenantCutoffs = DEFAULT_CUTOFFS
) -> IntArray:
    """Confusion matrix of Genant grades (rows annotated, columns predicted, `GRADES` order).

    Parameters
    ----------
    g_true, g_pred : array_like
        Paired Genant indices.
    cutoffs : GenantCutoffs, optional
        Grade bounds.

    Returns
    -------
    numpy.ndarray
        ``(4, 4)`` counts.
    """
    out = np.zeros((len(GRADES), len(GRADES)), dtype=np.int64)
    for t, p in zip(np.ravel(g_true), np.ravel(g_pred), strict=True):
        out[grade(float(t), cutoffs).number, grade(float(p), cutoffs).number] += 1
    return out


def weighted_kappa(confusion: npt.ArrayLike, weights: str = "quadratic") -> float:
    """Cohen's weighted kappa of a square confusion matrix of ordered categories.

    Parameters
    ----------
    confusion : array_like
        ``(K, K)`` counts, rows one rater, columns the other.
    weights : {"quadratic", "linear", "none"}
        Disagreement weights ``((i − j) / (K − 1))²``, ``|i − j| / (K − 1)`` or 0/1.

    Returns
    -------
    float
        ``1 − Σ w·observed / Σ w·expected``; NaN when the expected disagreement is 0 (both
        raters use a single, identical category) or there are no counts.
    """
    c = np.asarray(confusion, dtype=np.float64)
    k = c.shape[0]
    if c.shape != (k, k):
        raise ValueError(f"confusion matrix must be square, got {c.shape}")
    n = c.sum()
    if n == 0 or k < 2:
        return math.nan
    i, j = np.indices((k, k))
    if weights == "quadratic":
        w = ((i - j) / (k - 1)) ** 2
    elif weights == "linear":
        w = np.abs(i - j) / (k - 1)
    elif weights == "none":
        w = (i != j).astype(np.float64)
    else:
        raise ValueError(f"weights must be quadratic, linear or none, got {weights!r}")
    expected = np.outer(c.sum(axis=1), c.sum(axis=0)) / n
    den = float((w * expected).sum())
    return math.nan if den == 0 else 1.0 - float((w * c).sum()) / den


@dataclass(frozen=True)
class BinaryTask:
    """One of Table 2's cells at one level (vertebra or patient).

    Attributes
    ----------
    cutoff : float
        Positive when G ≤ cutoff (annotated for the label, predicted for the decision).
    positives, negatives : int
        Items per annotated class.
    tp, fp, tn, fn : int
        Confusion counts at the operating point.
    auroc, sensitivity, specificity : Interval
        With bootstrap intervals (NaN when undefined).
    """

    cutoff: float
    positives: int
    negatives: int
    tp: int
    fp: int
    tn: int
    fn: int
    auroc: Interval
    sensitivity: Interval
    specificity: Interval


@dataclass(frozen=True)
class KeypointMetrics:
    """Every figure of the keypoint evaluation of one model.

    Attributes
    ----------
    table : MatchTable
        What the figures are computed from (for plots).
    counts : dict of str to int
        Images, studies, images without spacing, annotated, predicted and matched vertebrae,
        patients in Table 2.
    detection : dict of str to Interval
        ``recall``, ``precision``, ``recall_fractured`` (annotated G ≤ 0.74).
    localisation : dict of str to Interval
        ``centre_error_mm`` (mean) and ``centre_error_fractured_mm``.
    centre_error_median_mm, centre_error_sd_mm : float
        Median and standard deviation of the centre errors (no interval).
    height_mae_mm : dict of str to Interval
        Per height (`HEIGHT_NAMES`) and ``overall`` (all three heights pooled).
    bland_altman : dict of str to BlandAltman
        Per height and ``overall``.
    g_mae : Interval
        Mean absolute error of G on matched vertebrae.
    fractures : dict of str to dict of str to BinaryTask
        ``fractures[task][level]`` for task in `PAPER_CUTOFFS` and level ``vertebra`` or
        ``patient``.
    grade_confusion : numpy.ndarray
        Annotated × predicted grades with the project's cut-offs, matched vertebrae.
    grade_accuracy, kappa_linear, kappa_quadratic : float
        From the confusion matrix.
    levels : dict of str to Any or None
        Level-label figures (None when no level naming ran).
    cutoffs : GenantCutoffs
        The project's grade bounds used for the confusion matrix.
    """

    table: MatchTable
    counts: dict[str, int]
    detection: dict[str, Interval]
    localisation: dict[str, Interval]
    centre_error_median_mm: float
    centre_error_sd_mm: float
    height_mae_mm: dict[str, Interval]
    bland_altman: dict[str, BlandAltman]
    g_mae: Interval
    fractures: dict[str, dict[str, BinaryTask]]
    grade_confusion: IntArray
    grade_accuracy: float
    kappa_linear: float
    kappa_quadratic: float
    levels: dict[str, Any] | None
    cutoffs: GenantCutoffs = field(default=DEFAULT_CUTOFFS)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures (NaN as None; intervals as value, ci95, resamples used).

        Returns
        -------
        dict
            Everything but the table.
        """
        fr = {
            task: {level: _task_dict(b) for level, b in by_level.items()}
            for task, by_level in self.fractures.items()
        }
        return {
            "counts": dict(self.counts),
            "detection": {k: interval_dict(v) for k, v in self.detection.items()},
            "localisation": {
                **{k: interval_dict(v) for k, v in self.localisation.items()},
                "centre_error_median_mm": num(self.centre_error_median_mm),
                "centre_error_sd_mm": num(self.centre_error_sd_mm),
            },
            "height_mae_mm": {k: interval_dict(v) for k, v in self.height_mae_mm.items()},
            "bland_altman_mm": {
                k: {
                    "n": v.n,
                    "bias": num(v.bias),
                    "sd": num(v.sd),
                    "limits_of_agreement": [num(v.lower), num(v.upper)],
                }
                for k, v in self.bland_altman.items()
            },
            "genant_index_mae": interval_dict(self.g_mae),
            "fractures": fr,
            "grades": {
                "cutoffs": {
                    "mild": self.cutoffs.mild,
                    "moderate": self.cutoffs.moderate,
                    "severe": self.cutoffs.severe,
                },
                "order": [str(g) for g in GRADES],
                "confusion": self.grade_confusion.tolist(),
                "accuracy": num(self.grade_accuracy),
                "kappa_linear": num(self.kappa_linear),
                "kappa_quadratic": num(self.kappa_quadratic),
            },
            "levels": self.levels,
        }


def num(value: float) -> float | None:
    """Return a float for JSON, None for NaN.

    Parameters
    ----------
    value : float
        A number.

    Returns
    -------
    float or None
        The value, or None when it is NaN.
    """
    v = float(value)
    return None if math.isnan(v) else v


def interval_dict(iv: Interval) -> dict[str, Any]:
    """JSON form of an interval.

    Parameters
    ----------
    iv : Interval
        A bootstrap interval.

    Returns
    -------
    dict
        ``{"value", "ci95", "resamples_used"}``, NaN as None.
    """
    return {
        "value": num(iv.point),
        "ci95": [num(iv.low), num(iv.high)],
        "resamples_used": iv.n_resamples_used,
    }


def _task_dict(b: BinaryTask) -> dict[str, Any]:
    return {
        "cutoff": b.cutoff,
        "positives": b.positives,
        "negatives": b.negatives,
        "tp": b.tp,
        "fp": b.fp,
        "tn": b.tn,
        "fn": b.fn,
        "auroc": interval_dict(b.auroc),
        "sensitivity": interval_dict(b.sensitivity),
        "specificity": interval_dict(b.specificity),
    }


def patient_scores(table: MatchTable) -> tuple[IntArray, FloatArray, FloatArray]:
    """Lowest annotated and predicted G of each study that has annotated vertebrae.

    Parameters
    ----------
    table : MatchTable
        Matched images.

    Returns
    -------
    studies : numpy.ndarray
        Indices (into ``table.studies``) of the studies with annotated vertebrae.
    g_true, g_pred : numpy.ndarray
        Lowest annotated G and lowest predicted G (1.0 when nothing was predicted).
    """
    s = table.n_studies
    g_true = np.full(s, np.inf)
    np.minimum.at(g_true, table.truth_study, table.truth_g)
    g_pred = np.ones(s)
    np.minimum.at(g_pred, table.predicted_study, table.predicted_g)
    keep = np.flatnonzero(np.isfinite(g_true))
    return keep.astype(np.int64), g_true[keep], g_pred[keep]


def _binary_task(
    name: str,
    study: IntArray,
    g_true: FloatArray,
    g_pred: FloatArray,
    cutoff: float,
    n_studies: int,
    stats: dict[str, Statistic],
) -> Callable[[dict[str, Interval]], BinaryTask]:
    """Register a task's statistics and return how to build its result from the intervals."""
    y = g_true <= cutoff
    decision = g_pred <= cutoff
    stats[f"{name}/auroc"] = auroc_statistic(study, y, 1.0 - g_pred)
    stats[f"{name}/sensitivity"] = ratio_statistic(study, y & decision, y, n_studies)
    stats[f"{name}/specificity"] = ratio_statistic(study, ~y & ~decision, ~y, n_studies)

    def build(iv: dict[str, Interval]) -> BinaryTask:
        return BinaryTask(
            cutoff=cutoff,
            positives=int(y.sum()),
            negatives=int((~y).sum()),
            tp=int((y & decision).sum()),
            fp=int((~y & decision).sum()),
            tn=int((~y & ~decision).sum()),
            fn=int((y & ~decision).sum()),
            auroc=iv[f"{name}/auroc"],
            sensitivity=iv[f"{name}/sensitivity"],
            specificity=iv[f"{name}/specificity"],
        )

    return build


def _level_figures(table: MatchTable) -> dict[str, Any] | None:
    if not table.levels_named:
        return None
    with_truth = [
        (t, p) for t, p in zip(table.pair_level_true, table.pair_level_pred, strict=True) if t
    ]
    established = [(t, p) for t, p in with_truth if p is not None]
    correct = sum(1 for t, p in established if t == p)
    n_images = int(table.image_study.size)
    n_est = int(table.image_levels_established.sum())
    return {
        "matched_with_annotated_level": len(with_truth),
        "level_established": len(established),
        "correct": correct,
        "accuracy": num(correct / len(with_truth)) if with_truth else None,
        "accuracy_where_established": num(correct / len(established)) if established else None,
        "images": n_images,
        "images_with_levels": n_est,
        "fraction_images_with_levels": n_est / n_images if n_images else None,
    }


def keypoint_metrics(
    images: Sequence[ImageKeypoints],
    *,
    iou_threshold: float = IOU_THRESHOLD,
    cutoffs: GenantCutoffs = DEFAULT_CUTOFFS,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> KeypointMetrics:
    """Compute every keypoint figure of one model on a set of images.

    Parameters
    ----------
    images : sequence of ImageKeypoints
        Annotations and predictions per image.
    iou_threshold : float, optional
        Matching threshold (IoU strictly above it).
    cutoffs : GenantCutoffs, optional
        The project's grade bounds (grade confusion, accuracy, kappa).
    n_resamples, seed, confidence : optional
        Bootstrap over studies (see `bootstrap_statistics`).

    Returns
    -------
    KeypointMetrics
        See its attributes; the module docstring states the conventions.
    """
    t = match_images(images, iou_threshold=iou_threshold)
    s = t.n_studies
    stats: dict[str, Statistic] = {}
    fractured = t.truth_g <= FRACTURED_G
    stats["recall"] = ratio_statistic(t.truth_study, t.truth_matched, np.ones(t.truth_g.size), s)
    stats["recall_fractured"] = ratio_statistic(
        t.truth_study, t.truth_matched & fractured, fractured, s
    )
    stats["precision"] = ratio_statistic(
        t.predicted_study, t.predicted_matched, np.ones(t.predicted_g.size), s
    )
    stats["centre_error_mm"] = mean_statistic(t.pair_study, t.pair_centre_mm, s)
    pair_fractured = t.pair_g_true <= FRACTURED_G
    stats["centre_error_fractured_mm"] = mean_statistic(
        t.pair_study[pair_fractured], t.pair_centre_mm[pair_fractured], s
    )
    abs_h = np.abs(t.pair_heights_pred - t.pair_heights_true)
    for i, name in enumerate(HEIGHT_NAMES):
        stats[f"height/{name}"] = mean_statistic(t.pair_study, abs_h[:, i], s)
    stats["height/overall"] = mean_statistic(np.repeat(t.pair_study, 3), abs_h.ravel(), s)
    stats["g_mae"] = mean_statistic(t.pair_study, np.abs(t.pair_g_pred - t.pair_g_true), s)
    p_study, p_true, p_pred = patient_scores(t)
    builders: dict[str, dict[str, Callable[[dict[str, Interval]], BinaryTask]]] = {}
    for task, cut in PAPER_CUTOFFS.items():
        builders[task] = {
            "vertebra": _binary_task(
                f"{task}/vertebra", t.pair_study, t.pair_g_true, t.pair_g_pred, cut, s, stats
            ),
            "patient": _binary_task(f"{task}/patient", p_study, p_true, p_pred, cut, s, stats),
        }
    iv = bootstrap_statistics(stats, s, n_resamples=n_resamples, seed=seed, confidence=confidence)

    centres = t.pair_centre_mm[np.isfinite(t.pair_centre_mm)]
    confusion = grade_confusion(t.pair_g_true, t.pair_g_pred, cutoffs)
    total = int(confusion.sum())
    ba = {
        name: bland_altman(t.pair_heights_pred[:, i], t.pair_heights_true[:, i])
        for i, name in enumerate(HEIGHT_NAMES)
    }
    ba["overall"] = bland_altman(t.pair_heights_pred, t.pair_heights_true)
    counts = {
        "images": int(t.image_study.size),
        "images_without_spacing": int((~t.image_has_spacing).sum()),
        "studies": s,
        "annotated_vertebrae": int(t.truth_g.size),
        "annotated_fractured_vertebrae": int(fractured.sum()),
        "predicted_vertebrae": int(t.predicted_g.size),
        "matched_vertebrae": int(t.pair_study.size),
        "matched_with_spacing": int(centres.size),
        "patients": int(p_study.size),
    }
    return KeypointMetrics(
        table=t,
        counts=counts,
        detection={k: iv[k] for k in ("recall", "precision", "recall_fractured")},
        localisation={k: iv[k] for k in ("centre_error_mm", "centre_error_fractured_mm")},
        centre_error_median_mm=float(np.median(centres)) if centres.size else math.nan,
        centre_error_sd_mm=float(centres.std(ddof=1)) if centres.size > 1 else math.nan,
        height_mae_mm={k: iv[f"height/{k}"] for k in (*HEIGHT_NAMES, "overall")},
        bland_altman=ba,
        g_mae=iv["g_mae"],
        fractures={
            task: {level: build(iv) for level, build in by_level.items()}
            for task, by_level in builders.items()
        },
        grade_confusion=confusion,
        grade_accuracy=float(np.trace(confusion)) / total if total else math.nan,
        kappa_linear=weighted_kappa(confusion, "linear"),
        kappa_quadratic=weighted_kappa(confusion, "quadratic"),
        levels=_level_figures(t),
        cutoffs=cutoffs,
    )
