"""Slice geometry of a CT series: planes from the headers, and the checks of the stack.

Everything here comes from Image Position (Patient), Image Orientation (Patient), Pixel
Spacing, Rows and Columns (per frame for the enhanced, multi-frame CT objects), never from
the order of the files, Instance Number, Slice Location or Gantry/Detector Tilt.

`analyse_stack` measures a series and names the first problem it finds, in this order:

1. **inconsistent_orientation**: a slice's row or column direction is more than
   `ORIENTATION_TOLERANCE_DEG` from the first slice's.
2. **inconsistent_pixel_spacing**: a Pixel Spacing value differs from the first slice's by
   more than `PIXEL_SPACING_TOLERANCE_MM`.
3. **inconsistent_matrix**: Rows or Columns differ.
4. **duplicate_positions**: two slices closer than `POSITION_TOLERANCE_MM` along the normal.
5. **tilted**: the slices are not stacked along their normal (a gantry tilt): the in-plane
   shift per mm along the normal, fitted over all slices, is more than
   `TILT_TOLERANCE_DEG`, or it moves the last slice more than half a pixel in-plane.
6. **irregular_spacing** (in-plane): a slice lies more than `POSITION_TOLERANCE_MM` off the
   fitted stacking line.
7. **missing_slices** / **irregular_spacing**: the steps between consecutive slices along
   the normal are compared with their median s, within ``max(SPACING_RTOL · s,
   POSITION_TOLERANCE_MM)``; a longer step that is a whole multiple k ≥ 2 of s (within the
   same tolerance times k) is a gap of k − 1 missing slices, anything else is irregular.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from spinexr.pipeline.ct.errors import CtRefusal, UnsupportedSeriesError

FloatArray = npt.NDArray[np.float64]

ORIENTATION_TOLERANCE_DEG: Final = 0.5
"""Largest angle between a slice's row (or column) direction and the first slice's."""

PIXEL_SPACING_TOLERANCE_MM: Final = 0.001
"""Largest difference of a Pixel Spacing value from the first slice's."""

POSITION_TOLERANCE_MM: Final = 0.01
"""Positions closer than this along the normal are duplicates; also the smallest tolerance on
a step and the largest in-plane deviation of a slice from the stacking line."""

TILT_TOLERANCE_DEG: Final = 1.0
"""Largest angle between the stacking direction and the slice normal (with the half-pixel
rule on the in-plane drift over the whole series)."""

SPACING_RTOL: Final = 0.01
"""Relative tolerance on each step between consecutive slices along the normal."""


@dataclass(frozen=True)
class Plane:
    """Where one slice (an image, or a frame of a multi-frame image) lies.

    Attributes
    ----------
    position : tuple of float
        Image Position (Patient), LPS mm of the first pixel's centre.
    orientation : tuple of float
        Image Orientation (Patient): row then column direction cosines.
    pixel_spacing : tuple of float
        Pixel Spacing: between rows, between columns (mm).
    rows, columns : int
        Matrix.
    slice_thickness : float or None
        Slice Thickness (mm), when given.
    sop_instance_uid : str
        The image.
    frame : int or None
        Zero-based frame index in a multi-frame image; None for a single-frame image.
    """

    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    slice_thickness: float | None
    sop_instance_uid: str
    frame: int | None = None


@dataclass(frozen=True)
class StackGeometry:
    """Measurements of a stack of planes and the first problem found (module docstring).

    Attributes
    ----------
    slices : int
        Number of planes.
    normal : numpy.ndarray
        ``(3,)`` unit normal of the first plane (row × column direction).
    axial_angle_deg : float
        Angle between the normal and the patient's z axis (0–90).
    tilt_deg : float
        Angle between the stacking direction and the normal (0 for one plane).
    spacing_mm : float or None
        Median step between consecutive planes along the normal (None for one plane).
    coverage_mm : float
        Extent along the normal: first to last plane centre plus one spacing.
    missing_slices : int
        Planes missing in whole-multiple gaps.
    order : tuple of int
        Indices of the planes sorted along the normal (ascending).
    problem : tuple of (CtRefusal, str) or None
        First problem and its message, None for a regular orthogonal stack.
    """

    slices: int
    normal: FloatArray
    axial_angle_deg: float
    tilt_deg: float
    spacing_mm: float | None
    coverage_mm: float
    missing_slices: int
    order: tuple[int, ...]
    problem: tuple[CtRefusal, str] | None


def planes_of(ds: Dataset) -> list[Plane]:
    """Read the plane of every frame of an image header.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        A single-frame image (Image Plane module) or an enhanced multi-frame image (Plane
        Position / Plane Orientation / Pixel Measures functional groups); pixel data are not
        needed.

    Returns
    -------
    list of Plane
        One per frame.

    Raises
    ------
    UnsupportedSeriesError
        ``invalid_header`` when a geometry attribute is missing or malformed.
    """
    uid = str(ds.get("SOPInstanceUID", ""))
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        if "PerFrameFunctionalGroupsSequence" not in ds:
            return [
                Plane(
                    position=_triple(ds.ImagePositionPatient),
                    orientation=_six(ds.ImageOrientationPatient),
                    pixel_spacing=_pair(ds.PixelSpacing),
                    rows=rows,
                    columns=columns,
                    slice_thickness=_float_or_none(ds.get("SliceThickness")),
                    sop_instance_uid=uid,
                )
            ]
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        out = []
        for i in range(frames):
            position = functional_group(ds, i, "PlanePositionSequence")
            orientation = functional_group(ds, i, "PlaneOrientationSequence")
            measures = functional_group(ds, i, "PixelMeasuresSequence")
            out.append(
                Plane(
                    position=_triple(position.ImagePositionPatient),
                    orientation=_six(orientation.ImageOrientationPatient),
                    pixel_spacing=_pair(measures.PixelSpacing),
                    rows=rows,
                    columns=columns,
                    slice_thickness=_float_or_none(measures.get("SliceThickness")),
                    sop_instance_uid=uid,
                    frame=i,
                )
            )
        return out
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise UnsupportedSeriesError(
            CtRefusal.INVALID_HEADER,
            f"image {uid or '(no SOP Instance UID)'} lacks a readable plane geometry "
            f"({type(exc).__name__})",
            series_instance_uid=str(ds.get("SeriesInstanceUID", "")) or None,
        ) from exc


def functional_group(ds: Dataset, frame: int, keyword: str) -> Dataset:
    """Return a functional group macro's item for a frame, per-frame first, then shared.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        An enhanced multi-frame image.
    frame : int
        Zero-based frame index.
    keyword : str
        The macro's sequence, e.g. ``"PlanePositionSequence"``.

    Returns
    -------
    pydicom.dataset.Dataset
        The sequence's first item.

    Raises
    ------
    KeyError
        When neither the frame's nor the shared functional groups hold the macro.
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame) and keyword in per_frame[frame]:
        return per_frame[frame][keyword][0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared is not None and len(shared) > 0 and keyword in shared[0]:
        return shared[0][keyword][0]
    raise KeyError(keyword)


def normal_of(orientation: Sequence[float]) -> FloatArray:
    """Return the unit slice normal (row direction × column direction).

    Parameters
    ----------
    orientation : sequence of float
        Image Orientation (Patient).

    Returns
    -------
    numpy.ndarray
        ``(3,)`` unit vector.
    """
    o = np.asarray(orientation, dtype=np.float64)
    n = np.cross(o[:3], o[3:])
    return np.asarray(n / np.linalg.norm(n), dtype=np.float64)


def analyse_stack(planes: Sequence[Plane]) -> StackGeometry:
    """Measure a stack of planes and find its first problem (see the module docstring).

    Parameters
    ----------
    planes : sequence of Plane
        The slices of one series, in any order.

    Returns
    -------
    StackGeometry
        Measurements; ``problem`` is None for a regular stack along the normal.

    Raises
    ------
    ValueError
        For an empty sequence.
    """
    if not planes:
        raise ValueError("no planes")
    first = planes[0]
    normal = normal_of(first.orientation)
    axial = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    positions = np.array([p.position for p in planes], dtype=np.float64)
    d = positions @ normal
    order = np.argsort(d, kind="stable")
    d_sorted = d[order]
    span = float(d_sorted[-1] - d_sorted[0])
    steps = np.diff(d_sorted)
    spacing = float(np.median(steps)) if len(steps) else None
    tilt, drift, wander = _tilt(positions[order], d_sorted, normal)

    def result(problem: tuple[CtRefusal, str] | None, missing: int = 0) -> StackGeometry:
        return StackGeometry(
            slices=len(planes),
            normal=normal,
            axial_angle_deg=axial,
            tilt_deg=tilt,
            spacing_mm=spacing,
            coverage_mm=span + (spacing or 0.0),
            missing_slices=missing,
            order=tuple(int(i) for i in order),
            problem=problem,
        )

    problem = _consistency(planes)
    if problem is not None:
        return result(problem)
    if len(planes) == 1 or spacing is None:
        return result(None)
    if steps.min() < POSITION_TOLERANCE_MM:
        n_dup = int(np.sum(steps < POSITION_TOLERANCE_MM))
        return result(
            (CtRefusal.DUPLICATE_POSITIONS, f"{n_dup} slice(s) share a position with another")
        )
    half_pixel = 0.5 * min(first.pixel_spacing)
    if tilt > TILT_TOLERANCE_DEG or drift > half_pixel:
        return result(
            (
                CtRefusal.TILTED,
                f"slices are stacked {tilt:.2f}° off their normal (gantry tilt): the last "
                f"slice is shifted {drift:.2f} mm in-plane; a tilted series is not resampled",
            )
        )
    if wander > POSITION_TOLERANCE_MM:
        return result(
            (
                CtRefusal.IRREGULAR_SPACING,
                f"slice positions leave the stacking line by up to {wander:.3f} mm in-plane",
            )
        )
    return result(*_spacing(steps, spacing))


def _consistency(planes: Sequence[Plane]) -> tuple[CtRefusal, str] | None:
    """Find the first orientation, pixel spacing or matrix consistency problem."""
    o = np.array([p.orientation for p in planes], dtype=np.float64)
    rows_dir = o[:, :3] / np.linalg.norm(o[:, :3], axis=1, keepdims=True)
    cols_dir = o[:, 3:] / np.linalg.norm(o[:, 3:], axis=1, keepdims=True)
    cos_tol = math.cos(math.radians(ORIENTATION_TOLERANCE_DEG))
    off = (rows_dir @ rows_dir[0] < cos_tol) | (cols_dir @ cols_dir[0] < cos_tol)
    if off.any():
        worst = float(
            np.degrees(
                np.arccos(
                    np.clip(np.minimum(rows_dir @ rows_dir[0], cols_dir @ cols_dir[0]), -1, 1)
                )
            ).max()
        )
        return (
            CtRefusal.INCONSISTENT_ORIENTATION,
            f"{int(off.sum())} slice(s) are oriented up to {worst:.2f}° away from the first",
        )
    ps = np.array([p.pixel_spacing for p in planes], dtype=np.float64)
    dev = np.abs(ps - ps[0]).max(axis=1)
    if (dev > PIXEL_SPACING_TOLERANCE_MM).any():
        return (
            CtRefusal.INCONSISTENT_PIXEL_SPACING,
            f"{int((dev > PIXEL_SPACING_TOLERANCE_MM).sum())} slice(s) have a pixel spacing "
            f"up to {float(dev.max()):.3f} mm different from the first slice's",
        )
    matrices = {(p.rows, p.columns) for p in planes}
    if len(matrices) > 1:
        sizes = ", ".join(f"{r}×{c}" for r, c in sorted(matrices))
        return CtRefusal.INCONSISTENT_MATRIX, f"slices have different matrices ({sizes})"
    return None


def _tilt(positions: FloatArray, d: FloatArray, normal: FloatArray) -> tuple[float, float, float]:
    """Measure the tilt (°), in-plane drift over the stack (mm) and wander off the line (mm)."""
    if len(positions) < 2:
        return 0.0, 0.0, 0.0
    t = d - d[0]
    offsets = (positions - positions[0]) - t[:, None] * normal[None, :]
    denominator = float(t @ t)
    if denominator <= 0.0:
        return 0.0, 0.0, 0.0
    shear = (t @ offsets) / denominator  # in-plane shift per mm along the normal
    magnitude = float(np.linalg.norm(shear))
    residual = offsets - t[:, None] * shear[None, :]
    wander = float(np.linalg.norm(residual, axis=1).max())
    return math.degrees(math.atan(magnitude)), magnitude * float(t[-1]), wander


def _spacing(steps: FloatArray, spacing: float) -> tuple[tuple[CtRefusal, str] | None, int]:
    """Find gaps (whole missing slices) or irregular steps along the normal; count the missing."""
    tolerance = max(SPACING_RTOL * spacing, POSITION_TOLERANCE_MM)
    off = np.abs(steps - spacing) > tolerance
    if not off.any():
        return None, 0
    multiples = np.rint(steps / spacing)
    whole = (multiples >= 2) & (np.abs(steps - multiples * spacing) <= tolerance * multiples)
    if (off & ~whole).any():
        bad = steps[off & ~whole]
        return (
            CtRefusal.IRREGULAR_SPACING,
            f"{len(bad)} step(s) between slices are not the spacing {spacing:.3f} mm or a "
            f"multiple of it (from {float(bad.min()):.3f} to {float(bad.max()):.3f} mm)",
        ), 0
    missing = int((multiples[off] - 1).sum())
    return (
        CtRefusal.MISSING_SLICES,
        f"{missing} slice(s) missing in {int(off.sum())} gap(s) (largest gap "
        f"{float(steps.max()):.3f} mm, spacing {spacing:.3f} mm)",
    ), missing


def _triple(value: Any) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in value)
    return a, b, c


def _six(value: Any) -> tuple[float, float, float, float, float, float]:
    v = [float(x) for x in value]
    if len(v) != 6:
        raise ValueError("orientation needs 6 values")
    return v[0], v[1], v[2], v[3], v[4], v[5]


def _pair(value: Any) -> tuple[float, float]:
    a, b = (float(v) for v in value)
    if a <= 0 or b <= 0:
        raise ValueError("pixel spacing must be positive")
    return a, b


def _float_or_none(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
