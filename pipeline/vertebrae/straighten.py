"""Spine straightening for CT (Pisov et al. 2020, ``method.md`` §8, step 1 → step 2).

The vertebral-body centre line, a 3D curve in patient coordinates (LPS mm), is fitted with
`fit_centreline` (a smoothing spline, resampled at equal arc-length steps). `straighten`
then resamples the volume on the planes orthogonal to that curve and keeps their central
sagittal line, so the curve becomes the image's centre column: one 2D image that shows
every vertebra, scoliosis or not, for the keypoint detector. `StraightMap` maps image
points back to patient coordinates (`StraightMap.to_patient`) and patient points into the
image (`StraightMap.from_patient`, for ground-truth keypoints at training time).

The straightened image
----------------------
- Row ``r`` lies on the plane orthogonal to the curve at arc length ``s = r · Δr`` from
  the curve's first (most superior) point: rows run superior → inferior.
- Column ``c`` lies ``(c₀ − c) · Δc`` mm along the plane's anterior axis from the curve,
  with ``c₀ = (columns − 1) / 2`` the curve's column: **anterior is on the image's left**,
  as the radiograph keypoint detector reads it (`spinexr.pipeline.vertebrae.facing`).
- Points are ``(row, column)`` with the centre of pixel ``image[i, j]`` at ``(i, j)``
  (array indices, as `scipy.ndimage.map_coordinates`); subtract 0.5 from coordinates whose
  origin is the top-left corner of the top-left pixel.

The moving frame
----------------
At each point of the curve, with ``t`` the unit superior tangent and ``A`` the fixed
anterior axis of the patient (``−y`` in LPS unless the caller gives another), the plane's
left axis is ``l = normalise(t × A)`` and its anterior axis ``a = l × t`` (``A`` with its
component along ``t`` removed). Unlike a Frenet–Serret frame it needs no curvature, so it
is defined on a straight curve (the ``straighten`` package's default frame is NaN there and
gives an all-zero image), and unlike a parallel-transported frame it cannot drift: each
plane's frame depends on its own tangent only, and its sagittal axis stays the patient's
(the frame the CT phantoms give each vertebral body, less its axial rotation). It is
undefined only where the curve runs along ``A`` (a horizontal spine), which is refused.

Heights measured in pixels on the image carry the straightening's distortion: a segment
along the curve ``x`` mm from it towards its centre of curvature (curvature ``κ``) is
``1 − κ x`` times as long in the patient as on the image. A kyphosis lengthens anterior
heights and shortens posterior ones on the image, a lordosis the reverse; on the CT
phantoms that is up to 0.8 mm (Genant index off by 0.06) at a kyphosis and 3.3 mm (0.19)
at a lumbar lordosis, the middle height unchanged. Measure heights with
`StraightMap.distance_mm`, between the points mapped back to 3D, as Pisov et al. do.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.interpolate import CubicSpline, make_smoothing_spline
from scipy.spatial import cKDTree

FloatArray = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]

ANTERIOR_LPS: Final = (0.0, -1.0, 0.0)
"""The patient's anterior direction in LPS, the default fixed axis of the frame."""

SUPERIOR_LPS: Final = (0.0, 0.0, 1.0)
"""The patient's superior direction in LPS: a fitted curve starts at its superior end."""

MIN_SINE: Final = 0.2
"""Smallest ``|t × A|`` accepted: the curve must run at least ~11.5° off the anterior axis."""

_NEWTON_STEPS = 8


class HasAffine(Protocol):
    """A voxel grid that gives its index → LPS affine (e.g. the CT phantoms' ``CtGrid``)."""

    def affine(self) -> FloatArray:
        """4×4 matrix mapping voxel indices ``(i, j, k, 1)`` to LPS ``(x, y, z, 1)``."""
        ...


@dataclass(frozen=True, eq=False)
class Centreline:
    """A smooth 3D curve sampled at equal arc-length steps, superior end first.

    Compared and hashed by identity (it holds arrays).

    Between and beyond the samples the curve is a cubic spline in arc length ``s``
    (``s = i · step_mm`` at sample ``i``), continued along its end tangents outside
    ``[0, length_mm]``.

    Attributes
    ----------
    points : numpy.ndarray
        ``(M, 3)`` LPS mm, ``M ≥ 2``, consecutive points ``step_mm`` apart along the curve.
    step_mm : float
        Arc length between consecutive samples.
    """

    points: FloatArray
    step_mm: float
    _spline: CubicSpline = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pts = np.array(self.points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) < 2 or not np.isfinite(pts).all():
            raise ValueError("a centre line needs at least two finite (x, y, z) points")
        if not self.step_mm > 0:
            raise ValueError(f"step must be positive: {self.step_mm}")
        pts.setflags(write=False)
        object.__setattr__(self, "points", pts)
        s = np.arange(len(pts), dtype=np.float64) * self.step_mm
        bc = "not-a-knot" if len(pts) > 3 else "natural"
        object.__setattr__(self, "_spline", CubicSpline(s, pts, axis=0, bc_type=bc))

    @property
    def length_mm(self) -> float:
        """Arc length from the first to the last sample."""
        return float((len(self.points) - 1) * self.step_mm)

    def evaluate(self, s: npt.ArrayLike, nu: int = 0) -> FloatArray:
        """Position or derivative of the curve at arc lengths ``s``.

        Parameters
        ----------
        s : array-like
            ``(N,)`` arc lengths (mm) from the first sample; any real value.
        nu : {0, 1, 2}
            Derivative order: position, tangent (about unit length), second derivative.

        Returns
        -------
        numpy.ndarray
            ``(N, 3)``; outside ``[0, length_mm]`` the curve runs straight along its end
            tangent (second derivative 0).
        """
        sv = np.atleast_1d(np.asarray(s, dtype=np.float64))
        inside = np.clip(sv, 0.0, self.length_mm)
        out: FloatArray = np.asarray(self._spline(inside, nu), dtype=np.float64)
        outside = sv != inside
        if outside.any():
            if nu == 0:
                d1 = np.asarray(self._spline(inside[outside], 1), dtype=np.float64)
                out[outside] += (sv - inside)[outside, None] * d1
            elif nu == 2:
                out[outside] = 0.0
        return out

    def tangents(self, s: npt.ArrayLike) -> FloatArray:
        """Return the unit tangents at arc lengths ``s``, along increasing ``s`` (inferior).

        Parameters
        ----------
        s : array-like
            ``(N,)`` arc lengths (mm).

        Returns
        -------
        numpy.ndarray
            ``(N, 3)`` unit vectors.
        """
        d = self.evaluate(s, 1)
        return d / np.linalg.norm(d, axis=1, keepdims=True)


def fit_centreline(
    points_lps: npt.ArrayLike,
    *,
    step_mm: float = 1.0,
    smoothing_mm: float | None = 30.0,
    extend_mm: float = 0.0,
    superior: npt.ArrayLike = SUPERIOR_LPS,
) -> Centreline:
    """Fit a smooth curve through noisy centre points and resample it at equal arc length.

    The points are ordered along their principal axis ``u`` (for per-slice points, the
    table axis) and each coordinate is fitted as a smoothing spline in ``u``
    (`scipy.interpolate.make_smoothing_spline`); the curve is then resampled every
    ``step_mm`` along its arc length, superior end first.

    Parameters
    ----------
    points_lps : array-like
        ``(N, 3)`` LPS mm, e.g. the centre point found on each axial slice; rows with NaN
        are dropped, at least five must remain.
    step_mm : float
        Arc length between samples (the straightened image's row spacing).
    smoothing_mm : float or None
        Cut-off wavelength of the smoothing (mm along ``u``): wiggles shorter than this are
        removed, longer curves (kyphosis, lordosis, scoliosis) kept; ``0`` interpolates the
        points, None chooses the smoothing by generalised cross-validation.
    extend_mm : float
        Continue the curve straight along its end tangents by this much at both ends (to
        show the partly visible vertebrae beyond the points).
    superior : array-like
        The patient's superior direction (LPS ``+z``); the fitted curve starts at this end.

    Returns
    -------
    Centreline
        The resampled curve (its last sample lies within ``step_mm`` of the fitted end).

    Raises
    ------
    ValueError
        For fewer than five finite points, points that do not spread along an axis, or a
        non-positive step.
    """
    if not step_mm > 0:
        raise ValueError(f"step must be positive: {step_mm}")
    if smoothing_mm is not None and smoothing_mm < 0:
        raise ValueError(f"smoothing must be None or at least 0: {smoothing_mm}")
    given: FloatArray = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
    pts: FloatArray = given[np.isfinite(given).all(axis=1)]
    if len(pts) < 5:
        raise ValueError(f"need at least five finite centre points, got {len(pts)}")
    centre = pts.mean(axis=0)
    _, sv, vt = np.linalg.svd(pts - centre, full_matrices=False)
    if sv[0] <= 1e-6:
        raise ValueError("the centre points do not spread along any axis")
    axis = vt[0] if vt[0] @ np.asarray(superior, dtype=np.float64) <= 0 else -vt[0]
    u, pts = _merge_ties(np.asarray((pts - centre) @ axis, dtype=np.float64), pts)
    if len(u) < 5:
        raise ValueError("need at least five centre points at distinct positions")
    h = float(u[-1] - u[0]) / (len(u) - 1)
    fits = [_smooth(u, pts[:, a], smoothing_mm, h) for a in range(3)]

    # Dense evaluation, arc length, then equal arc-length samples.
    du = min(0.25, 0.25 * step_mm)
    dense_u = np.linspace(u[0], u[-1], max(2, math.ceil((u[-1] - u[0]) / du) + 1))
    dense = np.column_stack([f(dense_u) for f in fits])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])
    head = [np.asarray(f(u[0], 1), dtype=np.float64) for f in fits]
    tail = [np.asarray(f(u[-1], 1), dtype=np.float64) for f in fits]
    t0, t1 = np.array(head).ravel(), np.array(tail).ravel()
    t0 /= np.linalg.norm(t0)
    t1 /= np.linalg.norm(t1)
    extend = max(0.0, float(extend_mm))
    count = math.floor((arc[-1] + 2.0 * extend) / step_mm + 1e-9) + 1
    s = np.arange(count, dtype=np.float64) * step_mm - extend
    inner = np.clip(s, 0.0, arc[-1])
    out = np.column_stack([np.interp(inner, arc, dense[:, a]) for a in range(3)])
    out += np.minimum(s, 0.0)[:, None] * t0 + np.maximum(s - arc[-1], 0.0)[:, None] * t1
    if len(out) < 2:
        raise ValueError(f"the curve ({arc[-1]:.1f} mm) is shorter than one step")
    return Centreline(points=out, step_mm=float(step_mm))


def curve_frame(
    tangents: npt.ArrayLike, anterior: npt.ArrayLike = ANTERIOR_LPS
) -> tuple[FloatArray, FloatArray]:
    """Return the anterior and left axes of the planes orthogonal to a curve.

    Parameters
    ----------
    tangents : array-like
        ``(N, 3)`` tangents (either sense; normalised here).
    anterior : array-like
        The fixed anterior axis ``A`` of the patient (LPS ``−y``).

    Returns
    -------
    anterior_axes, left_axes : numpy.ndarray
        ``(N, 3)`` unit vectors orthogonal to the tangents and to each other: ``A`` with its
        tangential part removed, and ``t × a`` for the superior tangent ``t`` (the patient's
        left when ``A`` is the anterior and ``t`` points up).

    Raises
    ------
    ValueError
        Where a tangent runs within about 11.5° of ``A`` (`MIN_SINE`): no sagittal plane.
    """
    t = np.atleast_2d(np.asarray(tangents, dtype=np.float64))
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    ant = np.asarray(anterior, dtype=np.float64)
    ant = ant / np.linalg.norm(ant)
    a = ant[None, :] - (t @ ant)[:, None] * t
    norm = np.linalg.norm(a, axis=1)
    if not (norm >= MIN_SINE).all():  # also catches NaN tangents
        raise ValueError("the curve runs along the anterior axis: no sagittal plane there")
    a /= norm[:, None]
    # The superior tangent is t or −t; left = superior × anterior either way below.
    up = np.where((t @ np.asarray(SUPERIOR_LPS))[:, None] < 0.0, -t, t)
    left = np.cross(up, a)
    return a, left


@dataclass(frozen=True)
class StraightMap:
    """Geometry of a straightened image: image ``(row, column)`` ↔ patient LPS mm.

    See the module docstring for the layout (rows superior → inferior along the curve,
    anterior on the left, pixel centres at integer coordinates).

    Attributes
    ----------
    curve : Centreline
        The centre line; row ``r`` is at arc length ``r · spacing_mm[0]``.
    rows, columns : int
        Image size.
    spacing_mm : tuple of float
        ``(between rows, between columns)``: arc length along the curve, distance along
        the anterior axis.
    anterior : tuple of float
        The fixed anterior axis the frame is built from.
    """

    curve: Centreline
    rows: int
    columns: int
    spacing_mm: tuple[float, float]
    anterior: tuple[float, float, float] = ANTERIOR_LPS

    @property
    def centre_column(self) -> float:
        """Column of the curve, ``(columns − 1) / 2``."""
        return 0.5 * (self.columns - 1)

    def frames(self, rows: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Curve point, anterior axis and left axis at (fractional) rows.

        Parameters
        ----------
        rows : array-like
            ``(N,)`` row coordinates (any real value; beyond the image the curve runs on
            straight).

        Returns
        -------
        origin, anterior_axes, left_axes : numpy.ndarray
            Each ``(N, 3)`` LPS.
        """
        s = np.atleast_1d(np.asarray(rows, dtype=np.float64)) * self.spacing_mm[0]
        a, left = curve_frame(self.curve.evaluate(s, 1), self.anterior)
        return self.curve.evaluate(s), a, left

    def to_patient(self, points_rc: npt.ArrayLike, lateral_mm: npt.ArrayLike = 0.0) -> FloatArray:
        """Patient coordinates of image points.

        Parameters
        ----------
        points_rc : array-like
            ``(N, 2)`` (or ``(2,)``) ``(row, column)``, sub-pixel.
        lateral_mm : array-like
            Distance towards the patient's left off the image plane (scalar or ``(N,)``).

        Returns
        -------
        numpy.ndarray
            ``(N, 3)`` LPS mm.
        """
        rc = np.asarray(points_rc, dtype=np.float64).reshape(-1, 2)
        origin, a, left = self.frames(rc[:, 0])
        ahead = (self.centre_column - rc[:, 1]) * self.spacing_mm[1]
        lat = np.broadcast_to(np.asarray(lateral_mm, dtype=np.float64), ahead.shape)
        out: FloatArray = origin + ahead[:, None] * a + lat[:, None] * left
        return out

    def project(self, points_lps: npt.ArrayLike) -> FloatArray:
        """Image coordinates of patient points and their distance off the image plane.

        Each point goes to the plane orthogonal to the curve that contains it (the one
        nearest the point: Newton's method on ``(p − C(s)) · C′(s) = 0`` from the nearest
        curve sample), then to that plane's anterior and left axes.

        Parameters
        ----------
        points_lps : array-like
            ``(N, 3)`` (or ``(3,)``) LPS mm.

        Returns
        -------
        numpy.ndarray
            ``(N, 3)``: row, column, and the distance towards the patient's left (mm)
            that the image drops.
        """
        p = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
        curve = self.curve
        _, nearest = cKDTree(curve.points).query(p)
        s = np.asarray(nearest, dtype=np.float64) * curve.step_mm
        for _ in range(_NEWTON_STEPS):
            d = p - curve.evaluate(s)
            d1, d2 = curve.evaluate(s, 1), curve.evaluate(s, 2)
            g = np.einsum("ij,ij->i", d, d1)
            dg = np.einsum("ij,ij->i", d, d2) - np.einsum("ij,ij->i", d1, d1)
            step = np.where(dg < 0.0, g / np.where(dg < 0.0, dg, -1.0), 0.0)
            s = s - np.clip(step, -4.0 * curve.step_mm, 4.0 * curve.step_mm)
        row = s / self.spacing_mm[0]
        origin, a, left = self.frames(row)
        d = p - origin
        column = self.centre_column - np.einsum("ij,ij->i", d, a) / self.spacing_mm[1]
        return np.column_stack([row, column, np.einsum("ij,ij->i", d, left)])

    def from_patient(self, points_lps: npt.ArrayLike) -> FloatArray:
        """Image ``(row, column)`` of patient points (their projection on the image plane).

        Parameters
        ----------
        points_lps : array-like
            ``(N, 3)`` (or ``(3,)``) LPS mm.

        Returns
        -------
        numpy.ndarray
            ``(N, 2)`` sub-pixel ``(row, column)``; `project` also gives the dropped
            lateral distance.
        """
        return self.project(points_lps)[:, :2]

    def distance_mm(self, a_rc: npt.ArrayLike, b_rc: npt.ArrayLike) -> FloatArray:
        """Distance in the patient between image points (e.g. a vertebral height).

        Parameters
        ----------
        a_rc, b_rc : array-like
            ``(N, 2)`` ``(row, column)`` points.

        Returns
        -------
        numpy.ndarray
            ``(N,)`` mm between ``to_patient(a_rc)`` and ``to_patient(b_rc)``, free of the
            straightening's distortion (see the module docstring).
        """
        d = self.to_patient(a_rc) - self.to_patient(b_rc)
        return np.asarray(np.linalg.norm(d, axis=1), dtype=np.float64)

    def sample_points(self, lateral_mm: float = 0.0) -> FloatArray:
        """Return the patient coordinates of every pixel, on the image plane or beside it.

        Parameters
        ----------
        lateral_mm : float
            Offset towards the patient's left (``0``: the image plane).

        Returns
        -------
        numpy.ndarray
            ``(rows, columns, 3)`` LPS mm.
        """
        origin, a, left = self.frames(np.arange(self.rows, dtype=np.float64))
        ahead = (self.centre_column - np.arange(self.columns)) * self.spacing_mm[1]
        out: FloatArray = (origin + lateral_mm * left)[:, None, :] + ahead[None, :, None] * a[
            :, None, :
        ]
        return out


@dataclass(frozen=True, eq=False)
class Straightened:
    """A straightened mid-sagittal image and its mapping to the patient (compared by identity).

    Attributes
    ----------
    image : numpy.ndarray
        ``float32`` ``(rows, columns)`` in the volume's units (HU), ``fill`` outside it.
    map : StraightMap
        Image ↔ patient geometry.
    slab : numpy.ndarray or None
        ``float32`` ``(rows, columns, K)`` samples at the ``K`` lateral offsets, when asked.
    """

    image: F32
    map: StraightMap
    slab: F32 | None = None

    @property
    def spacing_mm(self) -> tuple[float, float]:
        """``(row, column)`` pixel spacing in mm."""
        return self.map.spacing_mm

    def to_patient(self, points_rc: npt.ArrayLike) -> FloatArray:
        """``(N, 2)`` image ``(row, column)`` → ``(N, 3)`` LPS mm (`StraightMap.to_patient`).

        Parameters
        ----------
        points_rc : array-like
            Image points, sub-pixel.

        Returns
        -------
        numpy.ndarray
            Patient points on the image plane.
        """
        return self.map.to_patient(points_rc)

    def from_patient(self, points_lps: npt.ArrayLike) -> FloatArray:
        """``(N, 3)`` LPS mm → ``(N, 2)`` image ``(row, column)`` (`StraightMap.from_patient`).

        Parameters
        ----------
        points_lps : array-like
            Patient points.

        Returns
        -------
        numpy.ndarray
            Their projections on the image.
        """
        return self.map.from_patient(points_lps)


def straighten(
    volume: npt.NDArray[np.generic],
    affine_or_grid: npt.ArrayLike | HasAffine,
    curve: Centreline | npt.ArrayLike,
    *,
    width_mm: float = 120.0,
    spacing_mm: float | None = None,
    thickness_mm: float = 0.0,
    slab: Literal["mean", "max"] = "mean",
    order: int = 1,
    fill: float = -1024.0,
    anterior: npt.ArrayLike = ANTERIOR_LPS,
    keep_slab: bool = False,
) -> Straightened:
    """Resample a volume on the planes orthogonal to a curve; keep the mid-sagittal image.

    The planes of a slab are sampled one at a time from the box of the volume the image
    reaches (a view, or a float copy of that box for ``order > 1``), so memory and time grow
    with the image, not the volume; no straightened 3D volume is built unless a thick slab
    is kept (``keep_slab``).

    Parameters
    ----------
    volume : numpy.ndarray
        3D array (e.g. HU, ``(slices, rows, columns)``).
    affine_or_grid : array-like or HasAffine
        4×4 matrix mapping the volume's indices to LPS mm (e.g. highdicom ``Volume.affine``),
        or an object whose ``affine()`` (method or attribute) gives it.
    curve : Centreline or array-like
        The centre line, or ``(N, 3)`` raw centre points (NaN rows allowed) to fit with
        `fit_centreline` at the image's row spacing.
    width_mm : float
        Extent along the anterior axis, centred on the curve.
    spacing_mm : float, optional
        Pixel spacing, rows and columns; the smallest voxel spacing when omitted.
    thickness_mm : float
        Lateral thickness of a slab reduced to the image (0: the plane only); sampled every
        ``spacing_mm``.
    slab : {"mean", "max"}
        How a slab is reduced: mean, or maximum intensity projection.
    order : int
        Spline order of the interpolation (0 nearest, e.g. for labels; 1 linear; 3 cubic).
    fill : float
        Value outside the volume (more than half a voxel beyond its outer voxel centres;
        within that half voxel the outer voxels' values extend).
    anterior : array-like
        The patient's anterior axis (LPS ``−y``).
    keep_slab : bool
        Also return the slab's samples (`Straightened.slab`).

    Returns
    -------
    Straightened
        The image (rows superior → inferior, anterior on the left), its spacing and mapping.

    Raises
    ------
    ValueError
        For a volume that is not 3D, an affine that is not an invertible 4×4 matrix, a
        non-positive width or spacing, an unknown slab reduction or spline order, or a curve
        along the anterior axis.
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D, got shape {volume.shape}")
    affine = _affine(affine_or_grid)
    if spacing_mm is None:
        spacing_mm = float(np.linalg.norm(affine[:3, :3], axis=0).min())
    if not spacing_mm > 0 or not width_mm > 0 or thickness_mm < 0:
        raise ValueError("width and spacing must be positive, thickness at least 0")
    if slab not in ("mean", "max") or order not in range(6):
        raise ValueError(f"slab must be 'mean' or 'max' and order 0–5: {slab!r}, {order}")
    if not isinstance(curve, Centreline):
        curve = fit_centreline(curve, step_mm=spacing_mm)
    ant = np.asarray(anterior, dtype=np.float64).reshape(3)
    rows = math.floor(curve.length_mm / spacing_mm + 1e-9) + 1
    half = round(0.5 * width_mm / spacing_mm)
    geometry = StraightMap(
        curve=curve,
        rows=rows,
        columns=2 * half + 1,
        spacing_mm=(float(spacing_mm), float(spacing_mm)),
        anterior=(float(ant[0]), float(ant[1]), float(ant[2])),
    )
    k = round(0.5 * thickness_mm / spacing_mm)
    lateral = [float(i) * spacing_mm for i in range(-k, k + 1)]
    inv = np.linalg.inv(affine)

    def index(offset: float) -> FloatArray:
        points = geometry.sample_points(offset)
        out: FloatArray = points @ inv[:3, :3].T + inv[:3, 3]
        return out

    # Indices are affine in the lateral offset: the outer planes bound the slab's box.
    read = _reader(volume, (index(lateral[0]), index(lateral[-1])), order=order, fill=fill)
    shape = (geometry.rows, geometry.columns)
    samples = np.empty((*shape, len(lateral)), dtype=np.float32) if keep_slab else None
    total = np.zeros(shape, dtype=np.float64)
    top = np.full(shape, -np.inf, dtype=np.float32)
    for j, offset in enumerate(lateral):  # one plane at a time: memory of one image
        plane = read(index(offset))
        if samples is not None:
            samples[:, :, j] = plane
        total += plane
        np.maximum(top, plane, out=top)
    image = (total / len(lateral)).astype(np.float32) if slab == "mean" else top
    return Straightened(image=image, map=geometry, slab=samples)


# --- helpers --------------------------------------------------------------------------------


def _merge_ties(u: FloatArray, pts: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Sort by ``u`` and average points at the same ``u`` (a smoothing spline needs u rising)."""
    order = np.argsort(u, kind="stable")
    u, pts = u[order], pts[order]
    scale = max(1.0, float(np.abs(u).max()))
    new = np.concatenate([[True], np.diff(u) > 1e-9 * scale])
    groups = np.cumsum(new) - 1
    counts = np.bincount(groups).astype(np.float64)
    mean_u = np.bincount(groups, weights=u) / counts
    mean_p = np.column_stack([np.bincount(groups, weights=pts[:, a]) / counts for a in range(3)])
    return mean_u, mean_p


def _smooth(
    u: FloatArray, y: FloatArray, smoothing_mm: float | None, h: float
) -> Callable[..., FloatArray]:
    """Fit one coordinate as a function of ``u``: a spline called as ``(x, nu)``."""
    if smoothing_mm == 0:
        return CubicSpline(u, y, bc_type="natural")
    if smoothing_mm is None:
        return make_smoothing_spline(u, y)
    # Σ (y − f)² + λ ∫ f″² with points h apart passes wavelength L at half gain when
    # λ = (L / 2π)⁴ / h.
    lam = (smoothing_mm / (2.0 * math.pi)) ** 4 / h
    return make_smoothing_spline(u, y, lam=lam)


def _affine(affine_or_grid: npt.ArrayLike | HasAffine) -> FloatArray:
    """Return the 4×4 index → LPS matrix of an array, a grid or a highdicom volume."""
    value: object = affine_or_grid
    attr = getattr(affine_or_grid, "affine", None)
    if attr is not None:
        value = attr() if callable(attr) else attr
    affine = np.asarray(value, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ValueError(f"affine must be a finite 4×4 matrix, got shape {affine.shape}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("affine is singular")
    return affine


def _reader(
    volume: npt.NDArray[np.generic],
    bounds: Sequence[FloatArray],
    *,
    order: int,
    fill: float,
) -> Callable[[FloatArray], F32]:
    """Return an interpolator of ``volume`` at ``(..., 3)`` continuous indices.

    It reads only the box round the indices in ``bounds`` (every index it is later given
    must lie in that box), prefiltered once for splines of order above one. The volume
    covers half a voxel beyond its outer voxel centres: indices there take the outer
    voxels' values, indices beyond take ``fill``.
    """
    last = np.asarray(volume.shape, dtype=np.float64) - 1.0

    def clamp(index: FloatArray) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
        flat = index.reshape(-1, 3)
        inside: npt.NDArray[np.bool_] = np.asarray(
            ((flat >= -0.5) & (flat <= last + 0.5)).all(axis=1), dtype=np.bool_
        )
        return np.clip(flat, 0.0, last), inside

    margin = 1 if order <= 1 else 8
    clamped = np.concatenate([clamp(b)[0] for b in bounds])
    lo = np.maximum(np.floor(clamped.min(axis=0)).astype(np.int64) - margin, 0)
    hi = np.minimum(np.ceil(clamped.max(axis=0)).astype(np.int64) + margin + 1, volume.shape)
    box: npt.NDArray[np.generic] = volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    if order > 1:
        box = ndimage.spline_filter(box, order=order, output=np.float32, mode="mirror")

    def read(index: FloatArray) -> F32:
        shape = index.shape[:-1]
        flat, inside = clamp(index)
        out = np.full(len(flat), fill, dtype=np.float32)
        if inside.any():
            out[inside] = ndimage.map_coordinates(
                box,
                (flat[inside] - lo).T,
                order=order,
                mode="mirror" if order > 1 else "nearest",
                prefilter=False,
                output=np.float32,
            )
        return out.reshape(shape)

    return read
