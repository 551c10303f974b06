"""Which way the patient faces on a lateral view, from the header (Patient Orientation).

Patient Orientation (0020,0020) names the patient direction of the image's rows (towards
increasing column, the image's right) and of its columns (PS3.3 C.7.6.1.1.1). On a lateral
view the row direction is anterior (``A``: the patient faces the image's right) or posterior
(``P``: the patient faces the image's left, the usual display). A keypoint model that reads
the first height on the image's left as the anterior one (the Keypoint R-CNN baseline) is
right only for the second; the stage mirrors a right-facing image for the model and maps
the keypoints back (`mirror_objects`), so anterior stays anterior whatever the display.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

from spinexr.pipeline.vertebrae.objects import DetectedObject


class Facing(enum.StrEnum):
    """Where the patient's anterior side is on the image."""

    LEFT = "left"
    RIGHT = "right"


def facing_from_header(ds: Dataset) -> Facing | None:
    """Return the facing stated by Patient Orientation, or None when it states none.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image.

    Returns
    -------
    Facing or None
        ``RIGHT`` when the row direction is anterior (``A``, possibly with a head/foot
        component such as ``AF``), ``LEFT`` when it is posterior; None when the attribute is
        absent, malformed or names a left/right row direction (a frontal view).
    """
    value = ds.get("PatientOrientation")
    if not value:
        return None
    parts = str(value).split("\\") if isinstance(value, str) else [str(v) for v in value]
    if len(parts) != 2:
        return None
    row = str(parts[0]).strip().upper()
    main = row[:1]
    if main == "A":
        return Facing.RIGHT
    if main == "P":
        return Facing.LEFT
    return None


def mirror_objects(objects: Sequence[DetectedObject], columns: int) -> list[DetectedObject]:
    """Map detections on the mirrored image back to the original one.

    Parameters
    ----------
    objects : sequence of DetectedObject
        Detections on ``image[:, ::-1]``.
    columns : int
        The image's number of columns.

    Returns
    -------
    list of DetectedObject
        The same detections in original pixels (``x → columns − 1 − x``), keypoint names
        unchanged: the model named them on the mirrored image, where the patient faces left.
    """
    out = []
    for obj in objects:
        points = np.array(obj.keypoints, dtype=np.float64, copy=True)
        points[:, 0] = columns - 1 - points[:, 0]
        out.append(DetectedObject(kind=obj.kind, score=obj.score, keypoints=points))
    return out
