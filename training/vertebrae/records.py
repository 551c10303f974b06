"""Ground truth of one lateral image for the keypoint models: pixels, spacing, keypoints.

Every source of training data (phantoms, the annotation CSV beside a site's DICOM files)
produces `KeypointRecord` objects; the trainers and `evaluate` read only these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from spinexr.pipeline.vertebrae.objects import ObjectKind


@dataclass(frozen=True)
class AnnotatedObject:
    """One annotated vertebral body (or the first sacral segment).

    Attributes
    ----------
    kind : ObjectKind
        Vertebra or sacrum.
    level : str or None
        ``"L1"``, ``"T12"``, ``"S1"``...; None when the annotator did not name it.
    keypoints : numpy.ndarray
        ``(6, 2)`` ``(x, y)`` in original pixels, `genant.KEYPOINT_NAMES` order.
    """

    kind: ObjectKind
    level: str | None
    keypoints: npt.NDArray[np.float64]


@dataclass(frozen=True)
class KeypointRecord:
    """One lateral image with its annotations.

    Attributes
    ----------
    study, series, image : str
        Identifiers (Study / Series / SOP Instance UID or the dataset's ids); the study is
        the patient-level unit of the evaluation.
    display : numpy.ndarray
        ``uint8`` ``(rows, columns)`` display image (bone bright), as the pipeline prepares it.
    spacing_mm : tuple of float or None
        ``(row_mm, column_mm)`` used for heights; None when the image has no spacing.
    objects : list of AnnotatedObject
        Every annotated vertebra (and the sacrum when in view), any order.
    split : str
        ``"train"`` or ``"test"`` (or a fold name).
    """

    study: str
    series: str
    image: str
    display: npt.NDArray[np.uint8]
    spacing_mm: tuple[float, float] | None
    objects: list[AnnotatedObject] = field(default_factory=list)
    split: str = "train"

    @property
    def vertebrae(self) -> list[AnnotatedObject]:
        """The vertebral bodies, top to bottom."""
        out = [o for o in self.objects if o.kind is ObjectKind.VERTEBRA]
        return sorted(out, key=lambda o: float(o.keypoints[:, 1].mean()))

    @property
    def sacrum(self) -> AnnotatedObject | None:
        """The first sacral segment, when annotated."""
        return next((o for o in self.objects if o.kind is ObjectKind.SACRUM), None)
