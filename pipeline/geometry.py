"""Mapping between original DICOM pixel coordinates and resized model-input coordinates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class ResizeTransform:
    """An axis-aligned resize from an original image to a model input.

    Coordinates are continuous pixel coordinates with (0, 0) at the top-left corner of the
    top-left pixel (the convention of the VinDr-SpineXR CSV, MMDetection and the DICOM
    SCOORD PIXEL system up to its half-pixel origin), so a box ``(0, 0, W, H)`` covers the
    whole image in either space.

    Attributes
    ----------
    original_size : tuple of int
        (rows, columns) of the original image.
    resized_size : tuple of int
        (rows, columns) of the model input.
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]

    @property
    def scale_x(self) -> float:
        """Resized columns per original column."""
        return self.resized_size[1] / self.original_size[1]

    @property
    def scale_y(self) -> float:
        """Resized rows per original row."""
        return self.resized_size[0] / self.original_size[0]

    def to_resized(self, boxes: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map ``(N, 4)`` xyxy boxes from original to resized coordinates.

        Parameters
        ----------
        boxes : array_like
            Boxes as (xmin, ymin, xmax, ymax) in original pixels.

        Returns
        -------
        numpy.ndarray
            Boxes in resized pixels (float64).
        """
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        return b * np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y])

    def to_original(self, boxes: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map ``(N, 4)`` xyxy boxes from resized to original coordinates, clipped to the image.

        Parameters
        ----------
        boxes : array_like
            Boxes as (xmin, ymin, xmax, ymax) in resized pixels.

        Returns
        -------
        numpy.ndarray
            Boxes in original pixels (float64), clipped to ``[0, columns] × [0, rows]``.
        """
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        out = b / np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        rows, cols = self.original_size
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, cols)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, rows)
        return out


def detector_size(
    rows: int, cols: int, shorter: int = 800, longer_max: int = 1333
) -> tuple[int, int]:
    """Return the detector input size: shorter side ``shorter``, longer side ≤ ``longer_max``.

    This is MMDetection's ``Resize(scale=(1333, 800), keep_ratio=True)`` rule.

    Parameters
    ----------
    rows, cols : int
        Original size.
    shorter : int
        Target length of the shorter side.
    longer_max : int
        Upper bound on the longer side.

    Returns
    -------
    tuple of int
        (rows, columns) of the resized image.
    """
    scale = min(shorter / min(rows, cols), longer_max / max(rows, cols))
    return max(1, int(rows * scale + 0.5)), max(1, int(cols * scale + 0.5))
