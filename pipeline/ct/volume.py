"""Load a chosen CT series as a Hounsfield-unit volume with its affine, within a memory bound.

`load_volume` works in three passes:

1. **Headers** (``stop_before_pixels``): one series, one frame of reference, CT SOP
   classes, greyscale, a rescale for every slice; the planes of every slice
   (`geometry.planes_of`, per frame for enhanced CT) pass `geometry.analyse_stack` (regular
   steps along the normal, no tilt, no gap, consistent orientation, pixel spacing and
   matrix). highdicom's `highdicom.spatial.get_volume_positions` then gives each slice's
   index and the spacing from Image Position / Orientation (Patient) alone, never from file
   order, Instance Number or Gantry/Detector Tilt.
2. **Memory**: ``slices × rows × columns × itemsize`` of the output is compared with
   ``max_bytes`` before anything is decoded.
3. **Pixels**, one slice at a time, into a preallocated array: a single-frame file is read,
   decoded with pydicom's decoders (`spinexr.pipeline.preprocess.decode_pixels`), rescaled
   (Rescale Slope / Intercept) into its slot and dropped; an enhanced file's frames are
   decoded one by one with `pydicom.pixels.iter_pixels`. Besides the volume, memory holds
   a short summary of each header (the headers themselves are dropped after the first
   pass), one file's dataset and one decoded slice.

The volume is a `highdicom.Volume` (`Volume.from_attributes`: slices first, LPS affine,
right-handed; for a head-first supine axial series slice 0 is the most superior).

A tilted series is refused (``tilted``), not resampled: SimpleITK, which would resample it
onto a regular grid, is not a dependency of the node.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import highdicom
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import iter_pixels

from spinexr.pipeline.ct.errors import CtRefusal, UnsupportedSeriesError
from spinexr.pipeline.ct.geometry import (
    POSITION_TOLERANCE_MM,
    SPACING_RTOL,
    Plane,
    analyse_stack,
    functional_group,
    planes_of,
)
from spinexr.pipeline.ct.series import CT_SOP_CLASSES
from spinexr.pipeline.errors import UnsupportedImageError
from spinexr.pipeline.preprocess import decode_pixels

VolumeDtype = Literal["float32", "int16"]
"""Output voxel type: ``float32`` HU, or ``int16`` HU rounded to nearest and clipped."""

_PERPENDICULAR_TOL: Final = 1.0 - math.cos(math.radians(5.0))
"""Lenient tolerance passed to highdicom: `geometry.analyse_stack` has already applied the
stricter tilt rule, highdicom only orders the slices."""


@dataclass(frozen=True, eq=False)
class CtVolume:
    """A CT series as a volume.

    Attributes
    ----------
    volume : highdicom.Volume
        HU array ``(slices, rows, columns)`` and its affine (LPS mm).
    sop_instance_uids : tuple of str
        SOP Instance UID of each slice, in volume order.
    frames : tuple of int or None
        Zero-based frame index of each slice in its (enhanced) image; None for a
        single-frame image.
    series_instance_uid : str
        The series.
    frame_of_reference_uid : str
        Its frame of reference.
    """

    volume: highdicom.Volume
    sop_instance_uids: tuple[str, ...]
    frames: tuple[int | None, ...]
    series_instance_uid: str
    frame_of_reference_uid: str

    @property
    def array(self) -> npt.NDArray[Any]:
        """HU voxels ``(slices, rows, columns)`` (``float32`` or ``int16``)."""
        return self.volume.array

    @property
    def affine(self) -> npt.NDArray[np.float64]:
        """4×4 matrix mapping ``(slice, row, column, 1)`` to LPS mm."""
        return np.asarray(self.volume.affine, dtype=np.float64)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing (mm) along slices, rows and columns."""
        a, b, c = (float(v) for v in self.volume.spacing)
        return a, b, c


@dataclass(frozen=True)
class _Slice:
    """One slice to decode: where it comes from and where it goes."""

    path: Path
    plane: Plane
    slope: float
    intercept: float
    index: int = -1


def load_volume(
    paths: Sequence[Path], *, max_bytes: int, dtype: VolumeDtype = "float32"
) -> CtVolume:
    """Read one CT series into a HU volume with its affine (passes in the module docstring).

    Parameters
    ----------
    paths : sequence of pathlib.Path
        The series' files, in any order (single-frame CT images, or enhanced CT images).
    max_bytes : int
        Largest size of the output array; checked before any pixel is decoded.
    dtype : {"float32", "int16"}
        Output voxel type.

    Returns
    -------
    CtVolume
        The volume, its affine and the SOP Instance UID of each slice.

    Raises
    ------
    UnsupportedSeriesError
        ``invalid_header``, ``mixed_series``, ``not_ct``, ``too_few_slices``, a geometry
        refusal of `geometry.analyse_stack` (``missing_slices``, ``irregular_spacing``,
        ``tilted``, ``duplicate_positions``, ``inconsistent_orientation``,
        ``inconsistent_pixel_spacing``, ``inconsistent_matrix``), ``too_large``,
        ``no_pixel_data`` or ``undecodable``.
    """
    out_dtype = np.dtype(dtype)
    files = [_read_file(Path(p)) for p in paths]  # headers are dropped once summarised
    if not files:
        raise UnsupportedSeriesError(CtRefusal.TOO_FEW_SLICES, "no files were given")
    series_uid, frame_of_reference = _check_files(files)

    def refuse(reason: CtRefusal, message: str) -> UnsupportedSeriesError:
        return UnsupportedSeriesError(reason, message, series_instance_uid=series_uid)

    for f in files:
        if f.error is not None:
            raise f.error
    slices = [s for f in files for s in f.slices]
    if len(slices) < 2:
        raise refuse(CtRefusal.TOO_FEW_SLICES, f"{len(slices)} slice: a volume needs two")
    planes = [s.plane for s in slices]
    geometry = analyse_stack(planes)
    if geometry.problem is not None:
        raise refuse(*geometry.problem)
    spacing = geometry.spacing_mm or 0.0
    first = planes[0]
    hd_spacing, indices = highdicom.spatial.get_volume_positions(
        [p.position for p in planes],
        first.orientation,
        atol=2.0 * max(SPACING_RTOL * spacing, POSITION_TOLERANCE_MM),
        perpendicular_tol=_PERPENDICULAR_TOL,
    )
    if hd_spacing is None or indices is None:
        raise refuse(
            CtRefusal.IRREGULAR_SPACING,
            "highdicom does not accept the slice positions as a regular volume",
        )
    shape = (len(slices), first.rows, first.columns)
    needed = math.prod(shape) * out_dtype.itemsize
    if needed > max_bytes:
        raise refuse(
            CtRefusal.TOO_LARGE,
            f"{shape[0]}×{shape[1]}×{shape[2]} {out_dtype.name} voxels need {needed} bytes, "
            f"more than the bound of {max_bytes}",
        )
    placed = [
        _Slice(s.path, s.plane, s.slope, s.intercept, int(k))
        for s, k in zip(slices, indices, strict=True)
    ]
    array = np.empty(shape, dtype=out_dtype)
    for item, stored in _decoded(placed, series_uid):
        if stored.shape != shape[1:]:
            raise refuse(
                CtRefusal.UNDECODABLE,
                f"a slice decodes to {stored.shape}, expected {shape[1]}×{shape[2]}",
            )
        _rescale_into(array[item.index], stored, item.slope, item.intercept)
        del stored
    by_index = sorted(placed, key=lambda s: s.index)
    origin = by_index[0].plane
    volume = highdicom.Volume.from_attributes(
        array=array,
        image_position=origin.position,
        image_orientation=origin.orientation,
        pixel_spacing=origin.pixel_spacing,
        spacing_between_slices=float(hd_spacing),
        coordinate_system="PATIENT",
        frame_of_reference_uid=frame_of_reference,
    )
    return CtVolume(
        volume=volume,
        sop_instance_uids=tuple(s.plane.sop_instance_uid for s in by_index),
        frames=tuple(s.plane.frame for s in by_index),
        series_instance_uid=series_uid,
        frame_of_reference_uid=frame_of_reference,
    )


# --- headers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _File:
    """What a file's header says, kept instead of the header itself."""

    series_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    greyscale: bool
    slices: list[_Slice]
    error: UnsupportedSeriesError | None


def _read_file(path: Path) -> _File:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise UnsupportedSeriesError(
            CtRefusal.INVALID_HEADER, f"a file cannot be read as DICOM ({type(exc).__name__})"
        ) from exc
    slices: list[_Slice] = []
    error = None
    try:
        slices = _slices(path, ds)
    except UnsupportedSeriesError as exc:
        error = exc
    bits = ds.get("BitsAllocated", 16)
    return _File(
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "") or ""),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        greyscale=ds.get("SamplesPerPixel", 1) == 1 and bits in (8, 16, 32),
        slices=slices,
        error=error,
    )


def _check_files(files: list[_File]) -> tuple[str, str]:
    """Return the series and frame-of-reference UIDs, refusing mixed or non-CT files."""
    series = {f.series_uid for f in files}
    frames = {f.frame_of_reference_uid for f in files}
    uid = next(iter(series)) if len(series) == 1 else None
    if uid is None or len(frames) != 1:
        raise UnsupportedSeriesError(
            CtRefusal.MIXED_SERIES,
            f"the files belong to {len(series)} series and {len(frames)} frame(s) of reference",
        )
    if not uid or "" in frames:
        raise UnsupportedSeriesError(
            CtRefusal.INVALID_HEADER,
            "Series Instance UID or Frame of Reference UID is missing",
            series_instance_uid=uid or None,
        )
    not_ct = sum(f.sop_class_uid not in CT_SOP_CLASSES for f in files)
    if not_ct:
        raise UnsupportedSeriesError(
            CtRefusal.NOT_CT,
            f"{not_ct} of {len(files)} file(s) are not CT or Enhanced CT Image Storage",
            series_instance_uid=uid,
        )
    for f in files:
        if not f.greyscale:
            raise UnsupportedSeriesError(
                CtRefusal.NO_PIXEL_DATA,
                f"image {f.sop_instance_uid} is not integer greyscale",
                series_instance_uid=uid,
            )
    return uid, next(iter(frames))


def _slices(path: Path, ds: Dataset) -> list[_Slice]:
    """List the slices of one file, each with its rescale."""
    planes = planes_of(ds)
    out = []
    for plane in planes:
        source = ds if plane.frame is None else _transformation(ds, plane.frame)
        slope, intercept = _rescale(source, ds)
        out.append(_Slice(path, plane, slope, intercept))
    return out


def _transformation(ds: Dataset, frame: int) -> Dataset:
    try:
        return functional_group(ds, frame, "PixelValueTransformationSequence")
    except KeyError:
        return ds


def _rescale(source: Dataset, ds: Dataset) -> tuple[float, float]:
    uid = ds.get("SOPInstanceUID", "")
    if "ModalityLUTSequence" in ds:
        raise UnsupportedSeriesError(
            CtRefusal.INVALID_HEADER,
            f"image {uid} has a Modality LUT Sequence; CT needs Rescale Slope/Intercept",
            series_instance_uid=str(ds.get("SeriesInstanceUID", "")) or None,
        )
    try:
        return float(source.RescaleSlope), float(source.RescaleIntercept)
    except (AttributeError, TypeError, ValueError) as exc:
        raise UnsupportedSeriesError(
            CtRefusal.INVALID_HEADER,
            f"image {uid} lacks a readable Rescale Slope/Intercept",
            series_instance_uid=str(ds.get("SeriesInstanceUID", "")) or None,
        ) from exc


# --- pixels ----------------------------------------------------------------------------------


def _decoded(slices: list[_Slice], series_uid: str) -> Iterator[tuple[_Slice, npt.NDArray[Any]]]:
    """Yield each slice's stored values, one file (and one frame) at a time."""
    by_file: dict[Path, list[_Slice]] = {}
    for s in slices:
        by_file.setdefault(s.path, []).append(s)
    for path, items in by_file.items():
        if items[0].plane.frame is None:
            ds = pydicom.dcmread(path)
            if "PixelData" not in ds or ds["PixelData"].is_empty:
                raise UnsupportedSeriesError(
                    CtRefusal.NO_PIXEL_DATA,
                    f"image {items[0].plane.sop_instance_uid} has no Pixel Data",
                    series_instance_uid=series_uid,
                )
            try:
                stored = decode_pixels(ds)
            except UnsupportedImageError as exc:
                raise _undecodable(items[0], series_uid, exc) from exc
            del ds
            yield items[0], stored
            continue
        frames = [s.plane.frame or 0 for s in items]
        try:
            iterator = iter_pixels(path, indices=frames)
            for item in items:
                yield item, next(iterator)
        except UnsupportedSeriesError:
            raise
        except Exception as exc:  # decoders raise RuntimeError, ValueError, ...
            raise _undecodable(items[0], series_uid, exc) from exc
        except BaseException as exc:
            # pyo3's PanicException (a Rust decoder panicking) derives from BaseException.
            if type(exc).__name__ != "PanicException":
                raise
            raise _undecodable(items[0], series_uid, exc) from exc


def _undecodable(item: _Slice, series_uid: str, exc: BaseException) -> UnsupportedSeriesError:
    return UnsupportedSeriesError(
        CtRefusal.UNDECODABLE,
        f"image {item.plane.sop_instance_uid} cannot be decoded ({type(exc).__name__})",
        series_instance_uid=series_uid,
    )


def _rescale_into(
    out: npt.NDArray[Any], stored: npt.NDArray[Any], slope: float, intercept: float
) -> None:
    """Write ``stored · slope + intercept`` into a slice of the volume."""
    if out.dtype == np.float32:
        np.copyto(out, stored, casting="unsafe")
        if slope != 1.0:
            out *= np.float32(slope)
        if intercept != 0.0:
            out += np.float32(intercept)
        return
    hu = stored.astype(np.float32)
    hu *= np.float32(slope)
    hu += np.float32(intercept)
    np.rint(hu, out=hu)
    info = np.iinfo(out.dtype)
    np.clip(hu, info.min, info.max, out=hu)
    np.copyto(out, hu, casting="unsafe")
