"""Vectorised 2-D shape primitives for drawing phantoms.

Every shape gives a signed distance in pixels (positive inside) on a window of the image
and a bounding box, so that the renderer and the box computation use the same geometry.
Coordinates are float pixels: ``x`` is the column, ``y`` the row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

BBox = tuple[float, float, float, float]
"""``(xmin, ymin, xmax, ymax)`` in float pixels."""


class Shape(Protocol):
    """A 2-D shape with a signed distance and a bounding box."""

    def bbox(self) -> BBox:
        """Return the bounding box ``(xmin, ymin, xmax, ymax)``."""
        ...

    def sdf(self, y: FloatArray, x: FloatArray) -> FloatArray:
        """Return the signed distance (pixels, positive inside) on a broadcast grid.

        Parameters
        ----------
        y : numpy.ndarray
            Row coordinates, shape ``(h, 1)``.
        x : numpy.ndarray
            Column coordinates, shape ``(1, w)``.

        Returns
        -------
        numpy.ndarray
            Distances, shape ``(h, w)``.
        """
        ...


@dataclass(frozen=True)
class Ellipse:
    """An ellipse, optionally rotated and with a lobulated (irregular) outline.

    Parameters
    ----------
    cx, cy : float
        Centre.
    a, b : float
        Semi-axes along the (rotated) x and y directions.
    angle : float
        Rotation in radians.
    lobes : int
        Number of lobes of the outline modulation (0: smooth).
    lobe_depth : float
        Relative depth of the modulation.
    phase : float
        Phase of the modulation in radians.
    """

    cx: float
    cy: float
    a: float
    b: float
    angle: float = 0.0
    lobes: int = 0
    lobe_depth: float = 0.0
    phase: float = 0.0

    def bbox(self) -> BBox:
        """Return the bounding box ``(xmin, ymin, xmax, ymax)``."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        grow = 1.0 + abs(self.lobe_depth)
        hx = math.hypot(self.a * c, self.b * s) * grow
        hy = math.hypot(self.a * s, self.b * c) * grow
        return (self.cx - hx, self.cy - hy, self.cx + hx, self.cy + hy)

    def sdf(self, y: FloatArray, x: FloatArray) -> FloatArray:
        """Return the approximate signed distance (pixels, positive inside)."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        dx = x - np.float32(self.cx)
        dy = y - np.float32(self.cy)
        u = (dx * c + dy * s) / np.float32(self.a)
        v = (-dx * s + dy * c) / np.float32(self.b)
        q = np.sqrt(u * u + v * v)
        radius: FloatArray | float = 1.0
        if self.lobes and self.lobe_depth:
            theta = np.arctan2(v, u)
            wave = np.sin(np.float32(self.lobes) * theta + np.float32(self.phase))
            radius = (1.0 + np.float32(self.lobe_depth) * wave).astype(np.float32)
        out: FloatArray = ((radius - q) * np.float32(min(self.a, self.b))).astype(np.float32)
        return out


@dataclass(frozen=True)
class Capsule:
    """A segment with a radius (a rod or a screw shaft), optionally threaded.

    Parameters
    ----------
    x0, y0, x1, y1 : float
        End points of the axis.
    radius : float
        Half thickness.
    thread_pitch : float
        Distance between threads in pixels (0: smooth rod).
    thread_depth : float
        Thread depth in pixels.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    radius: float
    thread_pitch: float = 0.0
    thread_depth: float = 0.0

    def bbox(self) -> BBox:
        """Return the bounding box ``(xmin, ymin, xmax, ymax)``."""
        r = self.radius + self.thread_depth
        return (
            min(self.x0, self.x1) - r,
            min(self.y0, self.y1) - r,
            max(self.x0, self.x1) + r,
            max(self.y0, self.y1) + r,
        )

    def sdf(self, y: FloatArray, x: FloatArray) -> FloatArray:
        """Return the signed distance (pixels, positive inside)."""
        vx, vy = self.x1 - self.x0, self.y1 - self.y0
        length2 = max(vx * vx + vy * vy, 1e-6)
        px = x - np.float32(self.x0)
        py = y - np.float32(self.y0)
        t = np.clip((px * vx + py * vy) / np.float32(length2), 0.0, 1.0)
        dx = px - t * np.float32(vx)
        dy = py - t * np.float32(vy)
        dist = np.sqrt(dx * dx + dy * dy)
        radius: FloatArray | float = self.radius
        if self.thread_pitch > 0 and self.thread_depth > 0:
            along = t * np.float32(math.sqrt(length2))
            radius = self.radius + self.thread_depth * np.abs(
                np.sin(np.float32(math.pi) * along / np.float32(self.thread_pitch))
            )
        out: FloatArray = (radius - dist).astype(np.float32)
        return out


@dataclass(frozen=True)
class Polyline:
    """A chain of segments with a common radius (a rib); overlaps are not doubled.

    Parameters
    ----------
    points : tuple of (float, float)
        Vertices ``(x, y)``, at least two.
    radius : float
        Half thickness.
    """

    points: tuple[tuple[float, float], ...]
    radius: float

    def _segments(self) -> list[Capsule]:
        pts = self.points
        return [
            Capsule(pts[i][0], pts[i][1], pts[i + 1][0], pts[i + 1][1], self.radius)
            for i in range(len(pts) - 1)
        ]

    def bbox(self) -> BBox:
        """Return the bounding box ``(xmin, ymin, xmax, ymax)``."""
        return union_bbox([c.bbox() for c in self._segments()])

    def sdf(self, y: FloatArray, x: FloatArray) -> FloatArray:
        """Return the signed distance (pixels, positive inside): max over the segments."""
        out: FloatArray | None = None
        for seg in self._segments():
            d = seg.sdf(y, x)
            out = d if out is None else np.maximum(out, d)
        assert out is not None
        return out


@dataclass(frozen=True)
class ConvexPolygon:
    """A convex polygon given by its vertices (any winding).

    Parameters
    ----------
    points : tuple of (float, float)
        Vertices ``(x, y)``; at least three, convex.
    """

    points: tuple[tuple[float, float], ...]

    def bbox(self) -> BBox:
        """Return the bounding box ``(xmin, ymin, xmax, ymax)``."""
        xs = [p[0] for p in self.points]
        ys = [p[1] for p in self.points]
        return (min(xs), min(ys), max(xs), max(ys))

    def sdf(self, y: FloatArray, x: FloatArray) -> FloatArray:
        """Return the signed distance (pixels, positive inside): min over edge half-planes."""
        pts = self.points
        area2 = sum(
            pts[i][0] * pts[(i + 1) % len(pts)][1] - pts[(i + 1) % len(pts)][0] * pts[i][1]
            for i in range(len(pts))
        )
        sign = 1.0 if area2 > 0 else -1.0
        out: FloatArray | None = None
        for i, (ax, ay) in enumerate(pts):
            bx, by = pts[(i + 1) % len(pts)]
            ex, ey = bx - ax, by - ay
            norm = math.hypot(ex, ey) or 1.0
            # Cross product: positive on the interior side of a positively wound polygon.
            cross = np.float32(ex) * (y - np.float32(ay)) - np.float32(ey) * (x - np.float32(ax))
            d = (cross * np.float32(sign / norm)).astype(np.float32)
            out = d if out is None else np.minimum(out, d)
        assert out is not None
        return out


@dataclass(frozen=True)
class VertebralBody:
    """A vertebral body: vertical sides, sloped end plates, rounded corners.

    The superior end plate runs from ``(x0, top_l)`` to ``(x1, top_r)`` and the inferior one
    from ``(x0, bot_l)`` to ``(x1, bot_r)``. ``concavity`` moves the middle of both end
    plates towards the centre (a biconcave body).

    Parameters
    ----------
    x0, x1 : float
        Left and right sides.
    top_l, top_r, bot_l, bot_r : float
        End plate rows at the left and right sides.
    concavity : float
        Depth in pixels of the central depression of each end plate.
    radius : float
        Corner radius in pixels.
    """

    x0: float
    x1: float
    top_l: float
    top_r: float
    bot_l: float
    bot_r: float
    concavity: float = 0.0
    radius: float = 4.0

    def bbox(self) -> BBox:
        """Return the bounding box ``(xmin, ymin, xmax, ymax)``."""
        return (self.x0, min(self.top_l, self.top_r), self.x1, max(self.bot_l, self.bot_r))

    def top_at(self, x: float) -> float:
        """Row of the superior end plate at column ``x``."""
        u = (x - self.x0) / (self.x1 - self.x0)
        return (
            self.top_l
            + (self.top_r - self.top_l) * u
            + self.concavity * (1.0 - (2.0 * u - 1.0) ** 2)
        )

    def bottom_at(self, x: float) -> float:
        """Row of the inferior end plate at column ``x``."""
        u = (x - self.x0) / (self.x1 - self.x0)
        return (
            self.bot_l
            + (self.bot_r - self.bot_l) * u
            - self.concavity * (1.0 - (2.0 * u - 1.0) ** 2)
        )

    def heights(self) -> tuple[float, float, float]:
        """Left, middle and right heights (anterior, middle, posterior on a lateral view)."""
        mid = 0.5 * (self.x0 + self.x1)
        return (
            self.bot_l - self.top_l,
            self.bottom_at(mid) - self.top_at(mid),
            self.bot_r - self.top_r,
        )

    def sdf(self, y: FloatArray, x: FloatArray) -> FloatArray:
        """Return the signed distance (pixels, positive inside), rounded at the corners."""
        width = np.float32(self.x1 - self.x0)
        u = (x - np.float32(self.x0)) / width
        bulge = np.float32(self.concavity) * (1.0 - (2.0 * u - 1.0) ** 2)
        top = np.float32(self.top_l) + np.float32(self.top_r - self.top_l) * u + bulge
        bot = np.float32(self.bot_l) + np.float32(self.bot_r - self.bot_l) * u - bulge
        dx = np.minimum(x - np.float32(self.x0), np.float32(self.x1) - x)
        dy = np.minimum(y - top, bot - y)
        r = np.float32(self.radius)
        flat = np.minimum(dx, dy)
        cx = np.maximum(r - dx, 0.0)
        cy = np.maximum(r - dy, 0.0)
        corner = r - np.sqrt(cx * cx + cy * cy)
        in_corner = (dx < r) & (dy < r)
        out: FloatArray = np.where(in_corner, corner, flat).astype(np.float32)
        return out


def window(bbox: BBox, shape: tuple[int, ...], margin: float) -> tuple[slice, slice] | None:
    """Return the image slices covering ``bbox`` plus ``margin``, or None if outside.

    Parameters
    ----------
    bbox : tuple of float
        ``(xmin, ymin, xmax, ymax)``.
    shape : tuple of int
        Image ``(rows, cols)``.
    margin : float
        Extra pixels on each side.

    Returns
    -------
    tuple of slice or None
        ``(row_slice, col_slice)``; None when the window is empty.
    """
    rows, cols = shape[0], shape[1]
    x0 = max(0, math.floor(bbox[0] - margin))
    y0 = max(0, math.floor(bbox[1] - margin))
    x1 = min(cols, math.ceil(bbox[2] + margin) + 1)
    y1 = min(rows, math.ceil(bbox[3] + margin) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    return slice(y0, y1), slice(x0, x1)


def grid(sl: tuple[slice, slice]) -> tuple[FloatArray, FloatArray]:
    """Return broadcastable pixel-centre coordinates ``(y, x)`` for a window."""
    ys, xs = sl
    y = np.arange(ys.start, ys.stop, dtype=np.float32)[:, None]
    x = np.arange(xs.start, xs.stop, dtype=np.float32)[None, :]
    return y, x


def soft(d: FloatArray, edge: float) -> FloatArray:
    """Map a signed distance to a 0..1 occupancy with a soft edge ``edge`` pixels wide."""
    out: FloatArray = np.clip(0.5 + d / np.float32(edge), 0.0, 1.0).astype(np.float32)
    return out


def union_bbox(boxes: list[BBox]) -> BBox:
    """Return the bounding box of several boxes."""
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )
