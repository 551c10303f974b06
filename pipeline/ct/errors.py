"""Why a CT series is not analysed: `CtRefusal` codes and `UnsupportedSeriesError`.

The codes serve twice: as per-series reasons in `spinexr.pipeline.ct.series.SeriesChoice`
(why a series of a study was ignored) and as the ``reason`` of the error that
`spinexr.pipeline.ct.volume.load_volume` raises. Like `spinexr.pipeline.errors`, a code is
stable snake_case, and a message names only UIDs, counts, millimetres, degrees and DICOM
defined terms, never a header's free text (no PHI).
"""

from __future__ import annotations

import enum

from spinexr.pipeline.errors import PipelineError


class CtRefusal(enum.StrEnum):
    """Why a CT series cannot be analysed."""

    NOT_CT = "not_ct"
    """SOP Class is not CT / Enhanced CT / Legacy Converted Enhanced CT Image Storage."""
    LOCALIZER = "localizer"
    """Image Type says LOCALIZER (a scout / topogram)."""
    NOT_ORIGINAL = "not_original"
    """Image Type is not ORIGINAL\\PRIMARY, or names a reformat or projection."""
    BODY_PART = "body_part"
    """Body Part Examined is absent or not one of the allowed parts."""
    NOT_AXIAL = "not_axial"
    """The slice normal is too far from the patient's z axis."""
    TILTED = "tilted"
    """Slices are not stacked along their normal (gantry tilt); no resampler is installed."""
    TOO_FEW_SLICES = "too_few_slices"
    """Fewer slices than the minimum."""
    SHORT_COVERAGE = "short_coverage"
    """The slices cover less than the minimum length along the normal."""
    MISSING_SLICES = "missing_slices"
    """Gaps in the slice positions that are whole multiples of the spacing."""
    IRREGULAR_SPACING = "irregular_spacing"
    """Slice positions not on a regular grid (other than whole missing slices)."""
    DUPLICATE_POSITIONS = "duplicate_positions"
    """Two slices at the same position."""
    INCONSISTENT_ORIENTATION = "inconsistent_orientation"
    """Image Orientation (Patient) differs across slices."""
    INCONSISTENT_PIXEL_SPACING = "inconsistent_pixel_spacing"
    """Pixel Spacing differs across slices."""
    INCONSISTENT_MATRIX = "inconsistent_matrix"
    """Rows or Columns differ across slices."""
    MIXED_SERIES = "mixed_series"
    """Files of more than one series or frame of reference were given as one series."""
    INVALID_HEADER = "invalid_header"
    """An attribute the volume needs is missing or unreadable."""
    NO_PIXEL_DATA = "no_pixel_data"
    """An instance has no (integer, greyscale) Pixel Data."""
    TOO_LARGE = "too_large"
    """The decoded volume would exceed the memory bound."""
    UNDECODABLE = "undecodable"
    """Pixel data cannot be decoded."""
    NO_ELIGIBLE_SERIES = "no_eligible_series"
    """No series of the study passes the selection rules."""
    NO_SPINE = "no_spine"
    """The localiser finds no vertebral column in the volume (e.g. a head CT)."""
    ROI_OUTSIDE = "roi_outside"
    """A vertebra's characterisation slices leave the scanned volume (edge of the field of
    view): not padded with invented data."""


class UnsupportedSeriesError(PipelineError):
    """A CT series (or study) the pipeline refuses to analyse.

    Parameters
    ----------
    reason : CtRefusal
        What is wrong.
    message : str
        One line naming the offending values (UIDs, counts, mm, degrees only).
    series_instance_uid : str, optional
        The series, when known.
    """

    def __init__(
        self, reason: CtRefusal, message: str, series_instance_uid: str | None = None
    ) -> None:
        super().__init__(str(reason), message)
        self.refusal = reason
        self.series_instance_uid = series_instance_uid
