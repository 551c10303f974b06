"""What a keypoint model returns for one image, and the protocol every such model follows.

Two models implement `KeypointModel`: Pisov et al.'s single-stage detector
(`spinexr.pipeline.vertebrae.detector`) and torchvision's Keypoint R-CNN baseline
(`spinexr.pipeline.vertebrae.krcnn`). The pipeline, the evaluation and the demo bundle use
them only through this protocol.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt


class ObjectKind(enum.StrEnum):
    """What a detection is: a vertebral body, or the first sacral segment (S1)."""

    VERTEBRA = "vertebra"
    SACRUM = "sacrum"


@dataclass(frozen=True, eq=False)
class DetectedObject:
    """One detection (compared and hashed by identity: it holds an array).

    Attributes
    ----------
    kind : ObjectKind
        Vertebral body or first sacral segment.
    score : float
        Confidence in [0, 1].
    keypoints : numpy.ndarray
        ``(6, 2)`` float array of ``(x, y)`` in original image pixels, in
        `spinexr.pipeline.vertebrae.genant.KEYPOINT_NAMES` order (for the sacrum: its upper
        segment's anterior, middle and posterior heights, by the same convention).
    """

    kind: ObjectKind
    score: float
    keypoints: npt.NDArray[np.float64]

    @property
    def centre(self) -> tuple[float, float]:
        """Mean of the six keypoints ``(x, y)``."""
        c = self.keypoints.mean(axis=0)
        return float(c[0]), float(c[1])

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Axis-aligned box of the keypoints ``(xmin, ymin, xmax, ymax)``."""
        lo, hi = self.keypoints.min(axis=0), self.keypoints.max(axis=0)
        return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


class KeypointModel(Protocol):
    """A trained vertebra keypoint model, ready for inference."""

    @property
    def name(self) -> str:
        """Algorithm name and version, e.g. ``"pisov-keypoints 1"`` (for the SR)."""
        ...

    def predict(
        self, image: npt.NDArray[np.uint8], spacing_mm: tuple[float, float] | None
    ) -> list[DetectedObject]:
        """Detect vertebral bodies (and the sacrum) on one lateral image.

        Parameters
        ----------
        image : numpy.ndarray
            ``uint8`` ``(rows, columns)`` display image (bone bright), as
            `spinexr.pipeline.preprocess.PreparedImage.display`.
        spacing_mm : tuple of float, optional
            ``(row_mm, column_mm)``; None when the image has no spacing (the model then
            finds the scale itself).

        Returns
        -------
        list of DetectedObject
            After non-maximum suppression, any order.
        """
        ...


def sort_top_to_bottom(objects: Sequence[DetectedObject]) -> list[DetectedObject]:
    """Return the detections ordered by the row of their centre.

    Parameters
    ----------
    objects : sequence of DetectedObject
        Detections.

    Returns
    -------
    list of DetectedObject
        Top first.
    """
    return sorted(objects, key=lambda o: o.centre[1])
