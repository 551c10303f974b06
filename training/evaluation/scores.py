"""From raw predictions to the paper's figures: image scores, fused boxes, metrics.

- image score of a fusion mode: ``paper`` → the ensemble probability p; ``paper+average`` →
  (p + highest box score) / 2 (`spinexr.pipeline.fusion.averaged_probability`);
- boxes: detector-only (every box) or after the paper's rule at c*
  (`spinexr.pipeline.fusion.keep_boxes`);
- classification (Table 3): AUROC, sensitivity, specificity, F1 at c*, with bootstrap CIs;
- detection (Tables 4 and 5): per-class AP@0.5 (101-point, all images) and mAP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from spinexr.pipeline.classes import CLASS_NAMES
from spinexr.pipeline.fusion import averaged_probability, keep_boxes
from spinexr.pipeline.results import FusionMode
from spinexr.training.evaluation.predict import ImagePrediction
from spinexr.training.metrics import (
    DetectionResult,
    ImageBoxes,
    ImageDetections,
    Interval,
    average_precision,
    binary_metrics,
    bootstrap_ci,
    youden_threshold,
)


def image_scores(
    predictions: Sequence[ImagePrediction], mode: FusionMode
) -> npt.NDArray[np.float64]:
    """Image-level abnormality scores of a fusion mode.

    Parameters
    ----------
    predictions : sequence of ImagePrediction
        Raw outputs.
    mode : FusionMode
        ``paper`` (classifier probability) or ``paper+average``.

    Returns
    -------
    numpy.ndarray
        One score per prediction.
    """
    if mode is FusionMode.PAPER_AVERAGE:
        return np.array([averaged_probability(p.probability, p.boxes) for p in predictions])
    return np.array([p.probability for p in predictions], dtype=np.float64)


def labels(predictions: Sequence[ImagePrediction]) -> npt.NDArray[np.bool_]:
    """Image-level ground truth (abnormal = True)."""
    return np.array([p.record.abnormal for p in predictions], dtype=bool)


def fit_threshold(predictions: Sequence[ImagePrediction], mode: FusionMode) -> float:
    """c* = argmax of Youden's J on these (validation) predictions.

    Parameters
    ----------
    predictions : sequence of ImagePrediction
        Validation-split outputs.
    mode : FusionMode
        The mode whose image score c* applies to.

    Returns
    -------
    float
        The threshold (positive iff score ≥ c*).
    """
    return float(youden_threshold(labels(predictions), image_scores(predictions, mode)))


@dataclass(frozen=True)
class ClassificationReport:
    """Table 3 for one image score.

    Attributes
    ----------
    name : str
        Row label.
    threshold : float
        c* used.
    point : dict
        AUROC, sensitivity, specificity, F1 (and the confusion counts).
    intervals : dict of str to Interval
        95% bootstrap CIs.
    """

    name: str
    threshold: float
    point: dict[str, Any]
    intervals: dict[str, Interval]


def classification_report(
    name: str,
    y_true: npt.NDArray[np.bool_],
    scores: npt.NDArray[np.float64],
    threshold: float,
    *,
    n_resamples: int,
    seed: int,
) -> ClassificationReport:
    """AUROC, sensitivity, specificity and F1 at `threshold` with bootstrap CIs.

    Parameters
    ----------
    name : str
        Row label.
    y_true, scores : numpy.ndarray
        Labels and scores.
    threshold : float
        c*.
    n_resamples, seed : int
        Bootstrap parameters.

    Returns
    -------
    ClassificationReport
        The row.
    """
    from spinexr.training.metrics import auroc

    point: dict[str, Any] = dict(binary_metrics(y_true, scores, threshold))
    point["auroc"] = auroc(y_true, scores)
    intervals = bootstrap_ci(y_true, scores, threshold, n_resamples=n_resamples, seed=seed)
    return ClassificationReport(name=name, threshold=threshold, point=point, intervals=intervals)


def ground_truth(predictions: Sequence[ImagePrediction]) -> list[ImageBoxes]:
    """Ground-truth boxes of every image (normal images included, with no boxes)."""
    out = []
    for p in predictions:
        boxes = np.array([b.as_tuple() for b in p.record.boxes], dtype=np.float64).reshape(-1, 4)
        lab = np.array([b.label for b in p.record.boxes], dtype=np.int64)
        out.append(ImageBoxes(image_id=p.record.image_id, boxes=boxes, labels=lab))
    return out


def detections(
    predictions: Sequence[ImagePrediction],
    *,
    threshold: float | None = None,
    mode: FusionMode = FusionMode.PAPER,
) -> list[ImageDetections]:
    """Return detections per image: all boxes, or those the paper's rule keeps at `threshold`.

    Parameters
    ----------
    predictions : sequence of ImagePrediction
        Raw outputs.
    threshold : float, optional
        c*; None = detector only (no fusion).
    mode : FusionMode
        Image score the rule compares with c*.

    Returns
    -------
    list of ImageDetections
        One entry per image.
    """
    scores = image_scores(predictions, mode)
    out = []
    for p, s in zip(predictions, scores, strict=True):
        kept = p.boxes if threshold is None else tuple(keep_boxes(float(s), threshold, p.boxes))
        boxes = np.array([[b.xmin, b.ymin, b.xmax, b.ymax] for b in kept]).reshape(-1, 4)
        out.append(
            ImageDetections(
                image_id=p.record.image_id,
                boxes=boxes.astype(np.float64),
                scores=np.array([b.score for b in kept], dtype=np.float64),
                labels=np.array([int(b.label) for b in kept], dtype=np.int64),
            )
        )
    return out


def detection_report(
    predictions: Sequence[ImagePrediction],
    *,
    threshold: float | None = None,
    mode: FusionMode = FusionMode.PAPER,
) -> DetectionResult:
    """Per-class AP@0.5 and mAP (101-point, all images, 100 detections per image).

    Parameters
    ----------
    predictions : sequence of ImagePrediction
        Raw outputs.
    threshold : float, optional
        c* for the fusion rule; None = detector only.
    mode : FusionMode
        Image score the rule compares with c*.

    Returns
    -------
    DetectionResult
        Per-class AP and mean.
    """
    return average_precision(
        ground_truth(predictions),
        detections(predictions, threshold=threshold, mode=mode),
        num_classes=len(CLASS_NAMES),
    )
