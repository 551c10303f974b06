"""Pixel spacing of a projection radiograph, and which attribute it came from.

Projection radiographs may carry ``PixelSpacing`` (calibrated to the patient plane),
``ImagerPixelSpacing`` (at the detector) or neither; anything measured in mm must say which
one it used (``method.md`` section 8).
"""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass

from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)


class SpacingBasis(enum.StrEnum):
    """Which attribute the pixel spacing came from (values are the DICOM keywords)."""

    PIXEL_SPACING = "PixelSpacing"
    IMAGER_PIXEL_SPACING = "ImagerPixelSpacing"
    NONE = "none"


@dataclass(frozen=True)
class PixelSpacing:
    """Physical size of a pixel and its basis.

    Attributes
    ----------
    basis : SpacingBasis
        Where the values came from; `SpacingBasis.NONE` when absent, zero or malformed.
    row_mm, column_mm : float or None
        Spacing between rows and between columns, in mm; None when the basis is none.
    magnification : float or None
        The EstimatedRadiographicMagnificationFactor that ``ImagerPixelSpacing`` was divided
        by (`measurement_spacing` only); None otherwise.
    """

    basis: SpacingBasis
    row_mm: float | None = None
    column_mm: float | None = None
    magnification: float | None = None

    @property
    def pair(self) -> tuple[float, float] | None:
        """``(row_mm, column_mm)``, or None without a spacing."""
        if self.row_mm is None or self.column_mm is None:
            return None
        return self.row_mm, self.column_mm


def read_pixel_spacing(ds: Dataset) -> PixelSpacing:
    r"""Read the pixel spacing and say which attribute it came from.

    ``PixelSpacing`` wins over ``ImagerPixelSpacing``: for projection radiographs it is the
    calibrated, patient-plane value when both are present. A value that is absent, not two
    numbers, or not positive and finite (e.g. ``0\0``) counts as absent.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image.

    Returns
    -------
    PixelSpacing
        Spacing in mm and its basis.
    """
    for basis in (SpacingBasis.PIXEL_SPACING, SpacingBasis.IMAGER_PIXEL_SPACING):
        pair = _positive_pair(ds, str(basis))
        if pair is not None:
            return PixelSpacing(basis, pair[0], pair[1])
    return PixelSpacing(SpacingBasis.NONE)


def measurement_spacing(ds: Dataset) -> PixelSpacing:
    """Return the spacing to measure lengths in the patient plane, and how it was obtained.

    ``PixelSpacing`` when present (already calibrated to the patient, PS3.3 "Pixel Spacing
    Calibration"); otherwise ``ImagerPixelSpacing`` divided by
    ``EstimatedRadiographicMagnificationFactor`` when that factor is present and positive
    (detector pitch projected back to the isocentre), else ``ImagerPixelSpacing`` as is
    (lengths then overestimate by the unknown magnification, typically 5–15 %, and
    ratios are unaffected); no spacing otherwise.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image.

    Returns
    -------
    PixelSpacing
        Spacing in mm, its basis and the magnification factor applied (if any).
    """
    spacing = read_pixel_spacing(ds)
    if spacing.basis is not SpacingBasis.IMAGER_PIXEL_SPACING:
        return spacing
    factor = _positive_number(ds, "EstimatedRadiographicMagnificationFactor")
    if factor is None or spacing.row_mm is None or spacing.column_mm is None:
        return spacing
    return PixelSpacing(spacing.basis, spacing.row_mm / factor, spacing.column_mm / factor, factor)


def _positive_number(ds: Dataset, keyword: str) -> float | None:
    """Return ``ds.<keyword>`` as a positive finite float, or None."""
    try:
        value = ds.get(keyword)
        number = None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        logger.warning("ignoring malformed %s", keyword)
        return None
    if number is None or not math.isfinite(number) or number <= 0:
        return None
    return number


def _positive_pair(ds: Dataset, keyword: str) -> tuple[float, float] | None:
    """Return two positive finite numbers from ``ds.<keyword>``, or None."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        items = [value] if isinstance(value, str | bytes | int | float) else list(value)
        numbers = [float(v) for v in items]
    except (TypeError, ValueError):
        logger.warning("ignoring malformed %s", keyword)
        return None
    if len(numbers) != 2 or not all(math.isfinite(v) and v > 0 for v in numbers):
        return None
    return numbers[0], numbers[1]
