"""Voxel grid of a CT series: where each voxel ``(k, r, c)`` (slice, row, column) lies.

Slice ``k`` sits at table position ``origin_z − k · slice_spacing`` (slice 0 is the most
superior); its rows run along ``(1, 0, 0)`` and its columns along ``(0, cos τ, sin τ)`` for
a gantry tilt τ about the x axis (0 for an axial series), all in LPS millimetres. With a
tilt the slices stay at the table positions, so the stacking direction is not perpendicular
to the slices, as on a real tilted acquisition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class CtGrid:
    """Where the voxels of a CT series lie (see the module docstring).

    Attributes
    ----------
    rows, columns, slices : int
        Array shape is ``(slices, rows, columns)``.
    pixel_spacing : tuple of float
        DICOM Pixel Spacing: ``(between rows, between columns)`` in mm.
    slice_spacing : float
        Table increment between consecutive slices (mm).
    slice_thickness : float
        Nominal reconstructed slice thickness (mm).
    origin : tuple of float
        LPS centre of voxel ``(0, 0, 0)`` (Image Position (Patient) of slice 0).
    tilt_deg : float
        Gantry tilt about the x axis.
    """

    rows: int
    columns: int
    slices: int
    pixel_spacing: tuple[float, float]
    slice_spacing: float
    slice_thickness: float
    origin: tuple[float, float, float]
    tilt_deg: float = 0.0

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(slices, rows, columns)``."""
        return self.slices, self.rows, self.columns

    @property
    def row_direction(self) -> FloatArray:
        """Unit LPS direction along a row (increasing column index)."""
        return np.array([1.0, 0.0, 0.0])

    @property
    def column_direction(self) -> FloatArray:
        """Unit LPS direction along a column (increasing row index)."""
        t = math.radians(self.tilt_deg)
        return np.array([0.0, math.cos(t), math.sin(t)])

    @property
    def normal(self) -> FloatArray:
        """Slice normal (row × column direction)."""
        return np.asarray(np.cross(self.row_direction, self.column_direction), dtype=np.float64)

    @property
    def orientation(self) -> list[float]:
        """Image Orientation (Patient): row then column direction cosines."""
        return [*map(float, self.row_direction), *map(float, self.column_direction)]

    def affine(self) -> FloatArray:
        """4×4 matrix mapping ``(k, r, c, 1)`` to LPS ``(x, y, z, 1)``.

        Returns
        -------
        numpy.ndarray
            The affine (its first column is the table step, not the normal, when tilted).
        """
        out = np.eye(4)
        out[:3, 0] = [0.0, 0.0, -self.slice_spacing]
        out[:3, 1] = self.column_direction * self.pixel_spacing[0]
        out[:3, 2] = self.row_direction * self.pixel_spacing[1]
        out[:3, 3] = self.origin
        return out

    def positions(self) -> FloatArray:
        """Image Position (Patient) of every slice.

        Returns
        -------
        numpy.ndarray
            ``(slices, 3)`` LPS positions of each slice's first voxel.
        """
        k = np.arange(self.slices, dtype=np.float64)
        out = np.tile(np.asarray(self.origin, dtype=np.float64), (self.slices, 1))
        out[:, 2] -= k * self.slice_spacing
        return out

    def to_index(self, points: npt.ArrayLike) -> FloatArray:
        """Continuous voxel indices ``(k, r, c)`` of LPS points.

        Parameters
        ----------
        points : array-like
            ``(..., 3)`` LPS points (mm).

        Returns
        -------
        numpy.ndarray
            ``(..., 3)`` indices.
        """
        p = np.asarray(points, dtype=np.float64)
        inv = np.linalg.inv(self.affine())
        return p @ inv[:3, :3].T + inv[:3, 3]

    def axes(self) -> tuple[F32, F32, F32]:
        """Voxel coordinates for broadcasting: ``x (1, 1, C)``, ``y (1, R, 1)``, ``z (K, R, 1)``.

        Returns
        -------
        tuple of numpy.ndarray
            ``float32`` arrays; x depends on the column only, y on the row only and z on the
            slice and row (the row term is zero without tilt).
        """
        cd = self.column_direction
        c = np.arange(self.columns, dtype=np.float64)
        r = np.arange(self.rows, dtype=np.float64)
        k = np.arange(self.slices, dtype=np.float64)
        x = self.origin[0] + c * self.pixel_spacing[1]
        y = self.origin[1] + r * self.pixel_spacing[0] * cd[1]
        z = (self.origin[2] - k * self.slice_spacing)[:, None] + r[None, :] * (
            self.pixel_spacing[0] * cd[2]
        )
        return (
            x.astype(np.float32)[None, None, :],
            y.astype(np.float32)[None, :, None],
            z.astype(np.float32)[:, :, None],
        )

    def index_box(self, lo: npt.ArrayLike, hi: npt.ArrayLike) -> tuple[slice, slice, slice] | None:
        """Index ranges of the voxels whose centres can lie in an LPS box.

        Parameters
        ----------
        lo, hi : array-like
            Opposite corners ``(x, y, z)``.

        Returns
        -------
        tuple of slice or None
            ``(slices, rows, columns)`` ranges, or None when the box misses the grid.
        """
        lo_a, hi_a = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
        dc, dr = self.pixel_spacing[1], self.pixel_spacing[0] * self.column_direction[1]
        c0 = max(0, math.floor((lo_a[0] - self.origin[0]) / dc))
        c1 = min(self.columns, math.ceil((hi_a[0] - self.origin[0]) / dc) + 1)
        r0 = max(0, math.floor((lo_a[1] - self.origin[1]) / dr))
        r1 = min(self.rows, math.ceil((hi_a[1] - self.origin[1]) / dr) + 1)
        if c0 >= c1 or r0 >= r1:
            return None
        r = np.arange(r0, r1, dtype=np.float64)
        row_z = r * self.pixel_spacing[0] * self.column_direction[2]
        # Slice k holds z = origin_z − k·Δ + row_z; keep the k where some row falls in range.
        k_lo = (self.origin[2] + row_z.min() - hi_a[2]) / self.slice_spacing
        k_hi = (self.origin[2] + row_z.max() - lo_a[2]) / self.slice_spacing
        k0 = max(0, math.floor(k_lo))
        k1 = min(self.slices, math.ceil(k_hi) + 1)
        if k0 >= k1:
            return None
        return slice(k0, k1), slice(r0, r1), slice(c0, c1)

    @property
    def edge(self) -> float:
        """Width (mm) of the anti-aliased edge of painted shapes."""
        dr, dc = self.pixel_spacing
        return max(0.5, float((dr * dc * self.slice_spacing) ** (1.0 / 3.0)))
