"""The straightened mid-sagittal reformat the CT keypoint detector reads (Pisov et al., step 2).

One function makes the image from a CT volume and its vertebral-body centre line, for training
(`spinexr.training.ct.keypoints`, from the phantoms' true centre line, jittered) and for
inference (from `spinexr.pipeline.ct.localise`): `sagittal_reformat` straightens the volume
(`spinexr.pipeline.vertebrae.straighten`) at `REFORMAT_SPACING_MM` over `REFORMAT_WIDTH_MM`
and `reformat_display` windows it for the detector (bone bright, anterior on the left as on a
lateral radiograph facing left). Keypoints found on it map back to patient coordinates with
`Straightened.to_patient`; heights are measured there (`StraightMap.distance_mm`).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from spinexr.pipeline.vertebrae.straighten import (
    ANTERIOR_LPS,
    Centreline,
    HasAffine,
    Straightened,
    fit_centreline,
    straighten,
)

REFORMAT_SPACING_MM: Final = 1.0
"""Pixel spacing of the reformat, rows and columns (mm)."""

REFORMAT_WIDTH_MM: Final = 120.0
"""Extent of the reformat along the anterior axis, centred on the centre line (mm)."""

EXTEND_MM: Final = 20.0
"""How far the centre line is continued beyond its first and last points (mm), so that the
partly visible vertebrae at both ends of the field of view are in the image."""

BONE_WINDOW: Final = (400.0, 1800.0)
"""Window centre and width (HU) of the display image: cancellous bone mid-grey, cortex and
posterior elements bright, soft tissue dark."""


def centreline_of(points_lps: npt.ArrayLike) -> Centreline:
    """Return the smoothed centre line through per-slice centre points.

    Parameters
    ----------
    points_lps : array-like
        ``(N, 3)`` LPS mm (NaN rows, where no vertebral body was found, are dropped).

    Returns
    -------
    Centreline
        Fitted at `REFORMAT_SPACING_MM`, continued `EXTEND_MM` at both ends.
    """
    return fit_centreline(points_lps, step_mm=REFORMAT_SPACING_MM, extend_mm=EXTEND_MM)


def sagittal_reformat(
    volume_hu: npt.NDArray[np.generic],
    affine_or_grid: npt.ArrayLike | HasAffine,
    curve: Centreline | npt.ArrayLike,
    *,
    anterior: npt.ArrayLike = ANTERIOR_LPS,
) -> Straightened:
    """Return the straightened mid-sagittal image of a CT volume along its spine.

    Parameters
    ----------
    volume_hu : numpy.ndarray
        ``(slices, rows, columns)`` Hounsfield units.
    affine_or_grid : array-like or HasAffine
        Index → LPS mm affine of the volume.
    curve : Centreline or array-like
        The centre line, or ``(N, 3)`` LPS centre points to fit with `centreline_of`.
    anterior : array-like
        The patient's anterior axis (LPS ``−y``).

    Returns
    -------
    Straightened
        HU image (rows superior → inferior, anterior on the left) and its mapping.
    """
    line = curve if isinstance(curve, Centreline) else centreline_of(curve)
    return straighten(
        volume_hu,
        affine_or_grid,
        line,
        width_mm=REFORMAT_WIDTH_MM,
        spacing_mm=REFORMAT_SPACING_MM,
        anterior=anterior,
    )


def reformat_display(image_hu: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    """Window a reformat for the keypoint detector and for display.

    Parameters
    ----------
    image_hu : numpy.ndarray
        Hounsfield units.

    Returns
    -------
    numpy.ndarray
        ``uint8`` through `BONE_WINDOW` (linear, clipped).
    """
    centre, width = BONE_WINDOW
    low = centre - width / 2.0
    scaled = (np.asarray(image_hu, dtype=np.float64) - low) * (255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def project_xy(reformat: Straightened, points_lps: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Return patient points projected onto a reformat as keypoint ``(x, y)``.

    Parameters
    ----------
    reformat : Straightened
        The reformat.
    points_lps : array-like
        ``(N, 3)`` LPS mm.

    Returns
    -------
    numpy.ndarray
        ``(N, 2)`` ``(x, y)`` with the origin at the top-left corner of the top-left pixel
        (the keypoints' convention), from the reformat's ``(row, column)`` pixel centres.
    """
    rc = reformat.from_patient(np.asarray(points_lps, dtype=np.float64).reshape(-1, 3))
    return np.stack([rc[:, 1] + 0.5, rc[:, 0] + 0.5], axis=1)


def xy_to_rc(points_xy: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Return keypoint ``(x, y)`` as the reformat's ``(row, column)`` (inverse of `project_xy`).

    Parameters
    ----------
    points_xy : array-like
        ``(N, 2)`` ``(x, y)``, origin at the top-left corner of the top-left pixel.

    Returns
    -------
    numpy.ndarray
        ``(N, 2)`` ``(row, column)``, pixel centres at integers.
    """
    xy = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    return np.stack([xy[:, 1] - 0.5, xy[:, 0] - 0.5], axis=1)
