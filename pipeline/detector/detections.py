"""What the detector returns for one image: boxes, class ids and scores, validated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from spinexr.pipeline.classes import CLASS_NAMES


def _frozen_copy(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    c = np.array(a, copy=True)
    c.setflags(write=False)
    return c


@dataclass(frozen=True)
class Detections:
    """Boxes found on one image, validated when constructed, held as read-only copies.

    Attributes
    ----------
    boxes : numpy.ndarray
        ``(N, 4)`` float32 (xmin, ymin, xmax, ymax) in original image pixels (the DICOM grid,
        origin at the top-left corner of the top-left pixel), each inside the image.
    labels : numpy.ndarray
        ``(N,)`` int64 class ids (``LesionClass`` values).
    scores : numpy.ndarray
        ``(N,)`` float32 in [0, 1], sorted in descending order.
    """

    boxes: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        b, lab, s = self.boxes, self.labels, self.scores
        if b.dtype != np.float32 or b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes must be (N, 4) float32, got {b.shape} {b.dtype}")
        n = b.shape[0]
        if lab.dtype != np.int64 or lab.shape != (n,):
            raise ValueError(f"labels must be ({n},) int64, got {lab.shape} {lab.dtype}")
        if s.dtype != np.float32 or s.shape != (n,):
            raise ValueError(f"scores must be ({n},) float32, got {s.shape} {s.dtype}")
        if n and (lab.min() < 0 or lab.max() >= len(CLASS_NAMES)):
            raise ValueError(f"labels must be class ids 0..{len(CLASS_NAMES) - 1}")
        if not (np.isfinite(b).all() and np.isfinite(s).all()):
            raise ValueError("boxes and scores must be finite")
        if n and (s.min() < 0 or s.max() > 1):
            raise ValueError("scores must be in [0, 1]")
        if n > 1 and bool(np.any(np.diff(s) > 0)):
            raise ValueError("scores must be sorted in descending order")
        for name in ("boxes", "labels", "scores"):
            object.__setattr__(self, name, _frozen_copy(getattr(self, name)))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        """Return the result of an image with no detection (arrays of length 0)."""
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            labels=np.zeros((0,), np.int64),
            scores=np.zeros((0,), np.float32),
        )
