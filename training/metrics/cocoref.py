"""Cross-check of `detection.average_precision` against pycocotools' COCOeval.

Builds the COCO ground-truth and result objects in memory (image ids 1..N in ground-truth
order, category ids 1..num_classes for classes 0..num_classes-1, boxes as ``xywh``) and runs
COCOeval with ``iouThrs=[0.5]``, ``maxDets=[max_detections]`` and the area range "all".
pycocotools' progress prints are silenced.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from spinexr.training.metrics.detection import ImageBoxes, ImageDetections


def _xywh(box: npt.NDArray[np.float64]) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def pycocotools_ap(
    ground_truth: Sequence[ImageBoxes],
    detections: Sequence[ImageDetections],
    *,
    num_classes: int = 7,
    max_detections: int = 100,
    iou_threshold: float = 0.5,
) -> npt.NDArray[np.float64]:
    """Per-class AP from pycocotools' COCOeval at one IoU threshold.

    Parameters
    ----------
    ground_truth : sequence of ImageBoxes
        Every evaluated image, normal ones included.
    detections : sequence of ImageDetections
        Detections; image ids must be in the ground truth.
    num_classes : int, optional
        Number of classes (labels 0..num_classes-1).
    max_detections : int, optional
        COCOeval ``maxDets``.
    iou_threshold : float, optional
        COCOeval ``iouThrs`` (a single value).

    Returns
    -------
    numpy.ndarray
        Shape (num_classes,): mean of COCOeval's 101 interpolated precisions per class, NaN
        where COCOeval marks the class absent (no ground truth).

    Raises
    ------
    ValueError
        If a detection refers to an image not in the ground truth.
    """
    from pycocotools.coco import COCO  # type: ignore[import-untyped]
    from pycocotools.cocoeval import COCOeval  # type: ignore[import-untyped]

    ids = {g.image_id: i + 1 for i, g in enumerate(ground_truth)}
    images = [{"id": i} for i in ids.values()]
    categories = [{"id": c + 1, "name": str(c)} for c in range(num_classes)]
    gt_anns: list[dict[str, Any]] = []
    for g in ground_truth:
        for box, label in zip(g.boxes, g.labels, strict=True):
            xywh = _xywh(box)
            gt_anns.append(
                {
                    "id": len(gt_anns) + 1,
                    "image_id": ids[g.image_id],
                    "category_id": int(label) + 1,
                    "bbox": xywh,
                    "area": xywh[2] * xywh[3],
                    "iscrowd": 0,
                }
            )
    dt_anns: list[dict[str, Any]] = []
    for d in detections:
        if d.image_id not in ids:
            raise ValueError(f"detections for image {d.image_id}, which is not in the ground truth")
        for box, score, label in zip(d.boxes, d.scores, d.labels, strict=True):
            dt_anns.append(
                {
                    "image_id": ids[d.image_id],
                    "category_id": int(label) + 1,
                    "bbox": _xywh(box),
                    "score": float(score),
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "categories": categories, "annotations": gt_anns}
        coco_gt.createIndex()
        if dt_anns:
            coco_dt = coco_gt.loadRes(dt_anns)
        else:  # loadRes cannot take an empty list (it reads anns[0])
            coco_dt = COCO()
            coco_dt.dataset = {"images": images, "categories": categories, "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.iouThrs = np.array([iou_threshold])
        ev.params.maxDets = [max_detections]
        ev.params.areaRng = [[0.0, 1e5**2]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][0, :, :, 0, 0]  # (R, K)
    out = np.full(num_classes, np.nan)
    for k in range(num_classes):
        col = precision[:, k]
        if (col > -1).all():
            out[k] = float(col.mean())
    return out
