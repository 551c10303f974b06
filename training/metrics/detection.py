"""Detection average precision at one IoU threshold, computed exactly as COCOeval does.

PASCAL-VOC-style AP at IoU 0.5 with COCO's 101-point interpolation, i.e. what
``pycocotools.cocoeval.COCOeval`` reports with ``iouThrs=[0.5]``, ``maxDets=[100]``, area
range "all" and no crowd boxes. The COCOeval details reproduced here:

- Detections are handled per image **and class**: sorted by decreasing score with a stable
  sort (mergesort), and only the first `max_detections` of each (image, class) are kept
  (COCOeval applies ``maxDets`` in ``evaluateImg``, per image and category).
- Box IoU is COCO's: ``xywh`` boxes, no ``+1``, intersection ``min(x+w) - max(x)``.
- Each detection, in that order, is matched to the unmatched ground-truth box of its class
  with the highest IoU, provided IoU >= the threshold; among equal IoUs the later box wins.
- Over all images (in the order of the ground-truth sequence), detections are stably sorted
  by decreasing score; precision ``tp / (tp + fp + eps)`` is made monotone (running maximum
  from the right) and read at the recall thresholds ``linspace(0, 1, 101)`` with
  ``searchsorted(side='left')``; recall thresholds beyond the largest recall reached count 0.
  AP is the mean of the 101 values.
- Every ground-truth image takes part, normal ones included: detections on an image without
  a box of that class are false positives.

Not reproduced: COCO's area-range ignore rule, which only affects boxes larger than
1e10 px² (impossible on a radiograph), and crowd boxes (the dataset has none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

RECALL_THRESHOLDS: FloatArray = np.linspace(
    0.0, 1.0, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True, dtype=np.float64
)
"""COCO's 101 recall thresholds, built with COCOeval's own expression (bit-identical)."""


def _boxes_array(boxes: npt.ArrayLike, image_id: str) -> FloatArray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"image {image_id}: boxes must have shape (N, 4), got {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError(f"image {image_id}: boxes contain non-finite coordinates")
    bad = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"image {image_id}: box {i} {b[i].tolist()} is not xyxy with x2 >= x1 and y2 >= y1"
        )
    return b


def _labels_array(labels: npt.ArrayLike, n: int, image_id: str) -> IntArray:
    raw = np.asarray(labels)
    if raw.size == 0:
        raw = raw.reshape(0).astype(np.int64)
    if raw.shape != (n,):
        raise ValueError(f"image {image_id}: {n} boxes but labels has shape {raw.shape}")
    if raw.dtype.kind not in "iu":
        raise ValueError(f"image {image_id}: labels must be integers, got dtype {raw.dtype}")
    lab = raw.astype(np.int64)
    if (lab < 0).any():
        raise ValueError(f"image {image_id}: negative class label {int(lab.min())}")
    return lab


@dataclass(frozen=True, eq=False)
class ImageBoxes:
    """Ground-truth boxes of one image.

    Parameters
    ----------
    image_id : str
        Image identifier (the dataset's ``image_id``).
    boxes : array_like
        Shape (N, 4), ``xmin, ymin, xmax, ymax`` in pixels; N = 0 for a normal image.
    labels : array_like
        Shape (N,), integer class ids (0..6, see the method's label table).
    """

    image_id: str
    boxes: FloatArray
    labels: IntArray

    def __post_init__(self) -> None:
        boxes = _boxes_array(self.boxes, self.image_id)
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "labels", _labels_array(self.labels, len(boxes), self.image_id))


@dataclass(frozen=True, eq=False)
class ImageDetections:
    """Detections on one image.

    Parameters
    ----------
    image_id : str
        Image identifier; must be one of the ground-truth images.
    boxes : array_like
        Shape (N, 4), ``xmin, ymin, xmax, ymax`` in pixels.
    scores : array_like
        Shape (N,), finite confidence scores.
    labels : array_like
        Shape (N,), integer class ids.
    """

    image_id: str
    boxes: FloatArray
    scores: FloatArray
    labels: IntArray

    def __post_init__(self) -> None:
        boxes = _boxes_array(self.boxes, self.image_id)
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if scores.shape != (len(boxes),):
            raise ValueError(f"image {self.image_id}: {len(boxes)} boxes but {scores.size} scores")
        if not np.isfinite(scores).all():
            raise ValueError(f"image {self.image_id}: scores must be finite")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "labels", _labels_array(self.labels, len(boxes), self.image_id))


@dataclass(frozen=True, eq=False)
class PrecisionRecallCurve:
    """Cumulative precision and recall of one class over its ranked detections.

    Attributes
    ----------
    scores : numpy.ndarray
        Detection scores in evaluation order (decreasing).
    recall : numpy.ndarray
        Recall after each detection.
    precision : numpy.ndarray
        Precision after each detection (raw, before the monotone envelope).
    """

    scores: FloatArray
    recall: FloatArray
    precision: FloatArray


@dataclass(frozen=True, eq=False)
class DetectionResult:
    """Per-class average precision and what it was computed from.

    Attributes
    ----------
    per_class : numpy.ndarray
        Shape (num_classes,), AP per class; NaN for a class without ground truth.
    mean : float
        Mean AP over the classes that have ground truth (NaN if none has).
    num_gt : numpy.ndarray
        Shape (num_classes,), ground-truth boxes per class.
    num_det : numpy.ndarray
        Shape (num_classes,), detections evaluated per class (after the per-image cap).
    precision : numpy.ndarray
        Shape (num_classes, 101), interpolated precision at `recall_thresholds` (the values
        AP averages); NaN rows for classes without ground truth.
    recall_thresholds : numpy.ndarray
        The 101 COCO recall thresholds.
    curves : tuple of PrecisionRecallCurve
        Raw curve per class (empty arrays for a class without detections or ground truth).
    iou_threshold : float
        IoU needed for a match.
    max_detections : int
        Cap on detections per image and class.
    """

    per_class: FloatArray
    mean: float
    num_gt: IntArray
    num_det: IntArray
    precision: FloatArray
    recall_thresholds: FloatArray
    curves: tuple[PrecisionRecallCurve, ...]
    iou_threshold: float
    max_detections: int


def coco_iou(dets: FloatArray, gts: FloatArray) -> FloatArray:
    """IoU matrix between xyxy boxes, computed the way pycocotools' ``bbIou`` does.

    Parameters
    ----------
    dets : numpy.ndarray
        Shape (D, 4) xyxy.
    gts : numpy.ndarray
        Shape (G, 4) xyxy.

    Returns
    -------
    numpy.ndarray
        Shape (D, G). Boxes are converted to ``xywh`` first and the far edges recomputed as
        ``x + w`` so results are bit-identical to pycocotools on the same ``xywh`` input.
    """
    dx, dy = dets[:, 0:1], dets[:, 1:2]
    dw, dh = dets[:, 2:3] - dx, dets[:, 3:4] - dy
    gx, gy = gts[:, 0], gts[:, 1]
    gw, gh = gts[:, 2] - gx, gts[:, 3] - gy
    w = np.minimum(dx + dw, gx + gw) - np.maximum(dx, gx)
    h = np.minimum(dy + dh, gy + gh) - np.maximum(dy, gy)
    overlap = (w > 0) & (h > 0)
    inter = np.where(overlap, w * h, 0.0)
    union = dw * dh + gw * gh - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(overlap, inter / union, 0.0)


def _match(ious: FloatArray, iou_threshold: float) -> npt.NDArray[np.bool_]:
    """COCOeval's greedy matching of score-sorted detections (rows) to ground truth (columns).

    Returns whether each detection is a true positive.
    """
    n_det, n_gt = ious.shape
    tp = np.zeros(n_det, dtype=np.bool_)
    if n_gt == 0:
        return tp
    threshold = min(iou_threshold, 1 - 1e-10)
    free = np.ones(n_gt, dtype=np.bool_)
    for d in range(n_det):
        row = np.where(free, ious[d], -1.0)
        best = n_gt - 1 - int(np.argmax(row[::-1]))  # last index among equal maxima
        if row[best] >= threshold:
            free[best] = False
            tp[d] = True
    return tp


def _check_inputs(
    ground_truth: Sequence[ImageBoxes],
    detections: Sequence[ImageDetections],
    num_classes: int,
) -> dict[str, ImageDetections]:
    seen: set[str] = set()
    for g in ground_truth:
        if g.image_id in seen:
            raise ValueError(f"image {g.image_id} appears twice in the ground truth")
        seen.add(g.image_id)
        if g.labels.size and int(g.labels.max()) >= num_classes:
            raise ValueError(
                f"image {g.image_id}: ground-truth label {int(g.labels.max())} is not a class "
                f"id 0..{num_classes - 1}"
            )
    by_image: dict[str, ImageDetections] = {}
    for d in detections:
        if d.image_id not in seen:
            raise ValueError(f"detections for image {d.image_id}, which is not in the ground truth")
        if d.image_id in by_image:
            raise ValueError(f"image {d.image_id} appears twice in the detections")
        if d.labels.size and int(d.labels.max()) >= num_classes:
            raise ValueError(
                f"image {d.image_id}: detection label {int(d.labels.max())} is not a class id "
                f"0..{num_classes - 1}"
            )
        by_image[d.image_id] = d
    return by_image


def average_precision(
    ground_truth: Sequence[ImageBoxes],
    detections: Sequence[ImageDetections],
    *,
    num_classes: int = 7,
    iou_threshold: float = 0.5,
    max_detections: int = 100,
) -> DetectionResult:
    """Per-class AP at one IoU threshold with 101-point interpolation (COCOeval-identical).

    Parameters
    ----------
    ground_truth : sequence of ImageBoxes
        Every evaluated image, normal images (no boxes) included. Its order breaks ties
        between equal scores on different images, as COCO's sorted image ids do.
    detections : sequence of ImageDetections
        At most one entry per image; an image without an entry has no detections.
    num_classes : int, optional
        Number of classes; labels must be in ``0..num_classes-1``.
    iou_threshold : float, optional
        IoU needed for a true positive.
    max_detections : int, optional
        Highest-scoring detections kept per image and class (COCOeval's ``maxDets``).

    Returns
    -------
    DetectionResult
        See `DetectionResult`; the mean is over classes with ground truth only.

    Raises
    ------
    ValueError
        For detections on an image absent from the ground truth, duplicate images, labels
        out of range or invalid parameters.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if max_detections < 1:
        raise ValueError(f"max_detections must be at least 1, got {max_detections}")
    by_image = _check_inputs(ground_truth, detections, num_classes)

    num_gt = np.zeros(num_classes, dtype=np.int64)
    # Per class, in ground-truth image order: (scores, tp flags) of each image's kept detections.
    scores_parts: list[list[FloatArray]] = [[] for _ in range(num_classes)]
    tp_parts: list[list[npt.NDArray[np.bool_]]] = [[] for _ in range(num_classes)]
    for g in ground_truth:
        num_gt += np.bincount(g.labels, minlength=num_classes)
        d = by_image.get(g.image_id)
        if d is None or d.labels.size == 0:
            continue
        for c in np.unique(d.labels):
            sel = np.flatnonzero(d.labels == c)
            order = sel[np.argsort(-d.scores[sel], kind="mergesort")][:max_detections]
            gt_boxes = g.boxes[g.labels == c]
            tp = _match(coco_iou(d.boxes[order], gt_boxes), iou_threshold)
            scores_parts[c].append(d.scores[order])
            tp_parts[c].append(tp)

    R = RECALL_THRESHOLDS.size  # noqa: N806 (COCOeval's name)
    per_class = np.full(num_classes, np.nan)
    precision_grid = np.full((num_classes, R), np.nan)
    num_det = np.zeros(num_classes, dtype=np.int64)
    empty = np.zeros(0)
    curves: list[PrecisionRecallCurve] = []
    for c in range(num_classes):
        scores = np.concatenate(scores_parts[c]) if scores_parts[c] else empty
        tps = np.concatenate(tp_parts[c]) if tp_parts[c] else np.zeros(0, dtype=np.bool_)
        num_det[c] = scores.size
        if num_gt[c] == 0:
            curves.append(PrecisionRecallCurve(empty, empty, empty))
            continue
        order = np.argsort(-scores, kind="mergesort")
        scores = scores[order]
        tps = tps[order]
        tp_sum = np.cumsum(tps).astype(np.float64)
        fp_sum = np.cumsum(~tps).astype(np.float64)
        recall = tp_sum / num_gt[c]
        precision = tp_sum / (fp_sum + tp_sum + np.spacing(1))
        curves.append(PrecisionRecallCurve(scores, recall, precision))
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        idx = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
        q = np.zeros(R)
        reached = idx < envelope.size
        q[reached] = envelope[idx[reached]]
        precision_grid[c] = q
        per_class[c] = float(np.mean(q))
    has_gt = num_gt > 0
    mean = float(np.mean(per_class[has_gt])) if has_gt.any() else float("nan")
    return DetectionResult(
        per_class=per_class,
        mean=mean,
        num_gt=num_gt,
        num_det=num_det,
        precision=precision_grid,
        recall_thresholds=RECALL_THRESHOLDS.copy(),
        curves=tuple(curves),
        iou_threshold=float(iou_threshold),
        max_detections=int(max_detections),
    )
