"""Run a bundle's models over dataset images and keep the raw outputs.

Evaluation needs what the serving pipeline computes before fusion: the ensemble probability
(and each member's logit) and every detector box. This module runs the serving pipeline's own
pieces (`prepare_image` with the bundle's detector scale, the `ClassifierEnsemble`, the
`Detector`) on `ImageRecord` s, in chunks, with a progress line; fusion is applied later, per
threshold and mode, by `spinexr.training.evaluation.scores`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt
import pydicom

from spinexr.pipeline.classifier import images_to_batch
from spinexr.pipeline.engine import Pipeline, boxes_from_detections
from spinexr.pipeline.preprocess import prepare_image
from spinexr.pipeline.results import Box
from spinexr.training.data import ImageRecord
from spinexr.training.progress import RateProgress

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImagePrediction:
    """Raw model outputs for one dataset image.

    Attributes
    ----------
    record : ImageRecord
        The image and its ground truth.
    probability : float
        Ensemble probability p (sigmoid of the mean logit).
    logits : dict of str to float
        Each member's logit.
    boxes : tuple of Box
        Every detector box (original pixels), highest score first, before fusion.
    """

    record: ImageRecord
    probability: float
    logits: dict[str, float]
    boxes: tuple[Box, ...]

    def box_arrays(
        self,
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """Return ``(boxes (N, 4), scores (N,), labels (N,))`` as arrays."""
        boxes = np.array(
            [[b.xmin, b.ymin, b.xmax, b.ymax] for b in self.boxes], dtype=np.float64
        ).reshape(-1, 4)
        scores = np.array([b.score for b in self.boxes], dtype=np.float64)
        labels = np.array([int(b.label) for b in self.boxes], dtype=np.int64)
        return boxes, scores, labels


def predict_records(
    pipeline: Pipeline,
    records: Sequence[ImageRecord],
    *,
    label: str = "images",
    stream: TextIO | None = None,
    every: float = 10.0,
) -> list[ImagePrediction]:
    """Run the bundle's classifier ensemble and detector on dataset images.

    Parameters
    ----------
    pipeline : Pipeline
        Built from the bundle under evaluation.
    records : sequence of ImageRecord
        Images (any split).
    label : str
        Name used in progress lines.
    stream : file-like, optional
        Progress destination (default stderr).
    every : float
        Seconds between progress lines.

    Returns
    -------
    list of ImagePrediction
        In the order of `records`.

    Raises
    ------
    spinexr.pipeline.errors.UnsupportedImageError
        When an image cannot be analysed (evaluation must not skip images silently).
    """
    results: list[ImagePrediction] = []
    total = len(records)
    progress = RateProgress(total, label, prefix="predict", every=every, stream=stream)
    scale = pipeline.bundle.detector_scale
    for first in range(0, total, pipeline.chunk_size):
        chunk = records[first : first + pipeline.chunk_size]
        prepared = [
            prepare_image(_read(r), min_size=pipeline.min_size, detector_scale=scale) for r in chunk
        ]
        ensemble = pipeline.classifier.predict(
            images_to_batch([p.classifier_input for p in prepared])
        )
        detections = list(
            pipeline.detector.predict(
                [p.detector_input for p in prepared], [p.detector_transform for p in prepared]
            )
        )
        for k, (record, image, dets) in enumerate(zip(chunk, prepared, detections, strict=True)):
            boxes = sorted(boxes_from_detections(dets, image.original_size), key=lambda b: -b.score)
            results.append(
                ImagePrediction(
                    record=record,
                    probability=float(ensemble.probability[k]),
                    logits={a: float(v[k]) for a, v in ensemble.logits.items()},
                    boxes=tuple(boxes),
                )
            )
        progress.update(len(results))
    return results


def _read(record: ImageRecord) -> Any:
    return pydicom.dcmread(record.path)
