"""Evaluation metrics: image-level classification, bootstrap intervals, detection AP.

Library code uses numpy and scipy only. Two modules are left out of this namespace because
of their dependencies and are imported on demand: `spinexr.training.metrics.cocoref`
(pycocotools cross-check of the detection AP) and `spinexr.training.metrics.plots`
(matplotlib ROC and precision-recall PNGs).
"""

from spinexr.training.metrics.bootstrap import METRICS, Interval, bootstrap_ci
from spinexr.training.metrics.classification import (
    BinaryMetrics,
    auroc,
    binary_metrics,
    roc_curve,
    validate_binary,
    youden_threshold,
)
from spinexr.training.metrics.detection import (
    RECALL_THRESHOLDS,
    DetectionResult,
    ImageBoxes,
    ImageDetections,
    PrecisionRecallCurve,
    average_precision,
    coco_iou,
)

__all__ = [
    "METRICS",
    "RECALL_THRESHOLDS",
    "BinaryMetrics",
    "DetectionResult",
    "ImageBoxes",
    "ImageDetections",
    "Interval",
    "PrecisionRecallCurve",
    "auroc",
    "average_precision",
    "binary_metrics",
    "bootstrap_ci",
    "coco_iou",
    "roc_curve",
    "validate_binary",
    "youden_threshold",
]
