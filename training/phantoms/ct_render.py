"""Voxelisation of a phantom torso and spine in HU on a `CtGrid`.

`render_torso` paints, in Hounsfield units and vectorised over slabs of slices: the body
outline (air outside, subcutaneous fat, soft tissue), lungs above a domed diaphragm, heart,
liver, kidneys, aorta, bowel gas, the table, then the intervertebral discs, the vertebrae
(body with cortical shell and cancellous core, pedicles, laminae, articular, transverse and
spinous processes as capsules) and the ribs. Edges are anti-aliased from signed distances
(partial volume); `finish` blurs (slice profile and kernel) and adds correlated noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from spinexr.training.phantoms.ct_anatomy import (
    MODEL_LEVELS,
    BodyShape,
    PlacedVertebra,
    SpineColumn,
)
from spinexr.training.phantoms.ct_grid import F32, CtGrid, FloatArray

HU_AIR: Final = -1000.0
HU_FAT: Final = -100.0
HU_SOFT: Final = 40.0
HU_LUNG: Final = -850.0
HU_DISC: Final = 80.0
HU_MIN: Final = -1024
HU_MAX: Final = 3071
"""Range of the stored HU (12-bit with intercept −1024)."""

_SLAB: Final = 16
"""Slices processed together where whole slices are painted."""

Sdf = Callable[[F32, F32, F32], F32]
"""Signed distance (mm, negative inside) of a shape at broadcast ``X, Y, Z``."""


@dataclass(frozen=True)
class Torso:
    """Soft-tissue anatomy around the spine (mm, HU); see `random_torso`.

    Attributes
    ----------
    centre_x : float
        Body centre (x).
    centre_y : float
        Body centre (y) where the spine is at its mean depth.
    follow : float
        Share of the spine's sagittal curve the body outline follows.
    half_width, half_depth : float
        Semi-axes of the skin outline.
    fat : float
        Subcutaneous fat thickness.
    dome_z : tuple of float
        Top of the right and left diaphragm domes.
    aorta_radius, aorta_hu : float
        Descending aorta.
    cortex_mm, cortex_hu : float
        Cortical shell thickness and HU of the vertebrae and ribs.
    table_y : float
        Top of the table (y).
    spine_y : tuple of numpy.ndarray
        ``(z, y)`` samples of the centre line (ascending z) the outline follows.
    spine_x : numpy.ndarray
        ``x`` of the centre line at the same ``z``.
    gas : tuple of tuple of float
        Bowel gas bubbles ``(x, y, z, radius)`` relative to the body centre at that z.
    """

    centre_x: float
    centre_y: float
    follow: float
    half_width: float
    half_depth: float
    fat: float
    dome_z: tuple[float, float]
    aorta_radius: float
    aorta_hu: float
    cortex_mm: float
    cortex_hu: float
    table_y: float
    spine_y: tuple[FloatArray, FloatArray]
    spine_x: FloatArray
    gas: tuple[tuple[float, float, float, float], ...]

    def body_y(self, z: npt.ArrayLike) -> FloatArray:
        """Body centre y at height ``z`` (follows the spine by `follow`).

        Parameters
        ----------
        z : array-like
            Heights (mm).

        Returns
        -------
        numpy.ndarray
            Centre y.
        """
        zs, ys = self.spine_y
        zz = np.asarray(z, dtype=np.float64)
        return self.centre_y + self.follow * (np.interp(zz, zs, ys) - float(ys.mean()))

    def lung(self, side: float) -> tuple[float, float, float, float, float]:
        """Cross-section of one lung relative to the body centre, and its dome.

        Parameters
        ----------
        side : float
            -1 for the right lung, +1 for the left one.

        Returns
        -------
        tuple of float
            ``(dx, dy, semi_x, semi_y, dome_z)``: the ellipse's centre offset from
            ``(centre_x, body_y(z))`` and semi-axes (mm), and the top of its diaphragm dome;
            the lung fills the ellipse above the dome, which falls 45 mm towards the rim.
        """
        wall = self.fat + 12.0
        return (
            side * (0.5 * (self.half_width - wall) + 8.0),
            -0.08 * self.half_depth,
            0.46 * (self.half_width - wall),
            0.85 * (self.half_depth - wall),
            self.dome_z[0] if side < 0 else self.dome_z[1],
        )

    def spine_at(self, z: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        """Centre-line ``(x, y)`` at height ``z`` (clamped at the ends).

        Parameters
        ----------
        z : array-like
            Heights (mm).

        Returns
        -------
        tuple of numpy.ndarray
            x and y.
        """
        zs, ys = self.spine_y
        zz = np.asarray(z, dtype=np.float64)
        return np.interp(zz, zs, self.spine_x), np.interp(zz, zs, ys)


def random_torso(rng: np.random.Generator, column: SpineColumn) -> Torso:
    """Draw the soft-tissue anatomy around a column.

    The spine sits 75–105 mm in front of the skin of the back; the right diaphragm dome is
    at about the T9–T10 disc, the left one 10–25 mm lower.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of variation.
    column : SpineColumn
        The spine (gives the z of the levels and the centre line).

    Returns
    -------
    Torso
        The anatomy.
    """
    curve = column.curve[::-1]
    zs, xs, ys = curve[:, 2], curve[:, 0], curve[:, 1]
    half_width = rng.uniform(135.0, 185.0)
    half_depth = rng.uniform(95.0, 130.0)
    depth_to_back = rng.uniform(75.0, 105.0)
    spine_x0 = float(np.mean(xs))
    centre_y = float(ys.mean()) + depth_to_back - half_depth
    # Diaphragm: the T10 centre when the column holds it, else extrapolated.
    z_t10 = _level_z(column, "T10")
    dome_r = z_t10 + rng.uniform(5.0, 25.0)
    dome_l = dome_r - rng.uniform(10.0, 25.0)
    gas = tuple(
        (
            float(rng.uniform(-0.6, 0.6)),
            float(rng.uniform(-0.8, -0.2)),
            float(dome_r - rng.uniform(90.0, 260.0)),
            float(rng.uniform(6.0, 18.0)),
        )
        for _ in range(int(rng.integers(3, 9)))
    )
    return Torso(
        centre_x=spine_x0 + rng.uniform(-8.0, 8.0),
        centre_y=centre_y,
        follow=rng.uniform(0.5, 0.9),
        half_width=half_width,
        half_depth=half_depth,
        fat=rng.uniform(8.0, 35.0),
        dome_z=(float(dome_r), float(dome_l)),
        aorta_radius=rng.uniform(10.0, 14.0),
        aorta_hu=float(rng.choice([45.0, rng.uniform(150.0, 300.0)])),
        cortex_mm=rng.uniform(1.1, 1.8),
        cortex_hu=rng.uniform(700.0, 1000.0),
        table_y=centre_y + half_depth + rng.uniform(1.0, 25.0),
        spine_y=(zs, ys),
        spine_x=xs,
        gas=gas,
    )


def _level_z(column: SpineColumn, name: str) -> float:
    """Return the z of a level's centre, extrapolated at the mean pitch when the column lacks it."""
    try:
        return float(column.level(name).centre[2])
    except KeyError:
        pass
    verts = column.vertebrae
    pitch = (verts[0].centre[2] - verts[-1].centre[2]) / max(len(verts) - 1, 1)
    j = MODEL_LEVELS.index(name)
    j0 = MODEL_LEVELS.index(verts[0].level)
    return float(verts[0].centre[2] - (j - j0) * pitch)


# --- painting --------------------------------------------------------------------------------


def _occupancy(f: F32, edge: float) -> F32:
    """Partial-volume share of a shape from its signed distance."""
    return np.clip(0.5 - f / edge, 0.0, 1.0).astype(np.float32, copy=False)


def _blend(target: F32, occ: F32, value: float | F32) -> None:
    """``target ← target · (1 − occ) + value · occ`` in place."""
    v = np.float32(value) if isinstance(value, float | int) else value
    target += occ * (v - target)


def _paint(
    vol: F32,
    grid: CtGrid,
    axes: tuple[F32, F32, F32],
    lo: npt.ArrayLike,
    hi: npt.ArrayLike,
    sdf: Sdf,
    value: float,
) -> None:
    """Paint one shape of uniform HU inside its LPS bounding box."""
    box = grid.index_box(lo, hi)
    if box is None:
        return
    ks, rs, cs = box
    x, y, z = axes
    f = sdf(x[:, :, cs], y[:, rs, :], z[ks, rs, :])
    _blend(vol[ks, rs, cs], _occupancy(f, grid.edge), value)


def _ellipsoid(centre: npt.ArrayLike, semi: npt.ArrayLike) -> Sdf:
    cx, cy, cz = (float(v) for v in np.asarray(centre))
    a, b, c = (float(v) for v in np.asarray(semi))
    scale = np.float32(min(a, b, c))

    def sdf(x: F32, y: F32, z: F32) -> F32:
        q = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 + ((z - cz) / c) ** 2
        return ((np.sqrt(q) - 1.0) * scale).astype(np.float32)

    return sdf


def render_torso(
    grid: CtGrid,
    torso: Torso,
    column: SpineColumn,
    *,
    lungs: bool = True,
    labels: npt.NDArray[np.uint8] | None = None,
) -> F32:
    """Voxelise the torso and spine on a grid, in HU (no blur, no noise).

    Parameters
    ----------
    grid : CtGrid
        Where the voxels are.
    torso : Torso
        Soft tissue.
    column : SpineColumn
        Vertebrae.
    lungs : bool
        Paint the lungs above the diaphragm.
    labels : numpy.ndarray, optional
        ``uint8`` array of the grid's shape; voxels more than half inside the bone of
        vertebra ``i`` of ``column.vertebrae`` are set to ``i + 1``.

    Returns
    -------
    numpy.ndarray
        ``float32`` HU of shape ``grid.shape``.
    """
    vol = np.empty(grid.shape, dtype=np.float32)
    axes = grid.axes()
    _paint_body(vol, grid, axes, torso)
    _paint_abdomen(vol, grid, axes, torso)
    if lungs:
        _paint_lungs(vol, grid, axes, torso)
    _paint_mediastinum(vol, grid, axes, torso)
    for upper, lower in zip(column.vertebrae[:-1], column.vertebrae[1:], strict=True):
        _paint_disc(vol, grid, axes, upper, lower)
    for i, vertebra in enumerate(column.vertebrae):
        _paint_vertebra(vol, grid, axes, vertebra, torso, labels, i + 1)
    for vertebra in column.vertebrae:
        if vertebra.thoracic:
            for side in (-1.0, 1.0):
                _paint_rib(vol, grid, axes, vertebra, torso, side)
    return vol


def _paint_body(vol: F32, grid: CtGrid, axes: tuple[F32, F32, F32], torso: Torso) -> None:
    """Air, skin outline, fat, soft tissue and table, slab by slab."""
    x, y, z = axes
    edge = grid.edge
    a, b, fat = torso.half_width, torso.half_depth, torso.fat
    inner_a, inner_b = a - fat, b - 0.8 * fat
    table_top = torso.table_y - 0.0006 * (x - torso.centre_x) ** 2
    table = np.maximum(table_top - y, y - (table_top + 7.0))
    table = np.maximum(table, np.abs(x - torso.centre_x) - 220.0)
    table_occ = _occupancy(table.astype(np.float32), edge)
    for k0 in range(0, grid.slices, _SLAB):
        k1 = min(grid.slices, k0 + _SLAB)
        zz = z[k0:k1]
        z_mid = zz[:, grid.rows // 2, 0]
        by = torso.body_y(z_mid).astype(np.float32)[:, None, None]
        dx = x - np.float32(torso.centre_x)
        dy = y - by
        outer = (np.sqrt((dx / a) ** 2 + (dy / b) ** 2) - 1.0) * min(a, b)
        inner = (np.sqrt((dx / inner_a) ** 2 + (dy / inner_b) ** 2) - 1.0) * min(inner_a, inner_b)
        slab = np.full((k1 - k0, grid.rows, grid.columns), HU_AIR, dtype=np.float32)
        _blend(slab, _occupancy(outer.astype(np.float32), edge), HU_FAT)
        _blend(slab, _occupancy(inner.astype(np.float32), edge), HU_SOFT)
        _blend(slab, np.broadcast_to(table_occ, slab.shape), 120.0)
        vol[k0:k1] = slab


def _paint_lungs(vol: F32, grid: CtGrid, axes: tuple[F32, F32, F32], torso: Torso) -> None:
    """Lungs above the diaphragm, slab by slab."""
    x, y, z = axes
    for k0 in range(0, grid.slices, _SLAB):
        k1 = min(grid.slices, k0 + _SLAB)
        zz = z[k0:k1]
        by = torso.body_y(zz[:, grid.rows // 2, 0]).astype(np.float32)[:, None, None]
        occ = _lung_occupancy(x - np.float32(torso.centre_x), y - by, zz, torso, grid.edge)
        _blend(vol[k0:k1], occ, HU_LUNG)


def _lung_occupancy(dx: F32, dy: F32, z: F32, torso: Torso, edge: float) -> F32:
    """Share of lung in each voxel: two lateral ellipses above a domed diaphragm."""
    out: F32 | None = None
    for side in (-1.0, 1.0):
        cx, cy, la, lb, dome = torso.lung(side)
        q = np.sqrt(((dx - cx) / la) ** 2 + ((dy - cy) / lb) ** 2)
        ellipse = (q - 1.0) * min(la, lb)
        # The dome: highest at the lung's centre, 45 mm lower at its rim, lower posteriorly.
        dia = dome - 45.0 * np.minimum(q, 1.3) ** 2 - 12.0 * np.clip(dy - cy, 0.0, None) / lb
        f = np.maximum(ellipse, dia - z)
        occ = _occupancy(f.astype(np.float32), edge)
        out = occ if out is None else np.maximum(out, occ)
    assert out is not None
    return out


def _paint_abdomen(vol: F32, grid: CtGrid, axes: tuple[F32, F32, F32], torso: Torso) -> None:
    """Liver and spleen under their domes, kidneys beside the spine, bowel gas."""
    a, b = torso.half_width, torso.half_depth
    dome_r, dome_l = torso.dome_z
    cx = torso.centre_x
    by = float(torso.body_y(dome_r))
    z_kidney = dome_r - 95.0
    kx, ky = (float(v) for v in torso.spine_at(z_kidney))
    items: list[tuple[FloatArray, FloatArray, float]] = [
        (np.array([cx - 0.4 * a, by - 0.05 * b, dome_r - 75]), np.array([a / 2, 0.7 * b, 70]), 58),
        (np.array([cx + 0.55 * a, by + 0.35 * b, dome_l - 60]), np.array([40, 30, 50]), 48),
        (np.array([kx - 60.0, ky + 5.0, z_kidney]), np.array([28.0, 22.0, 55.0]), 32.0),
        (np.array([kx + 60.0, ky + 5.0, z_kidney + 15.0]), np.array([28.0, 22.0, 55.0]), 32.0),
    ]  # fmt: skip
    for gx, gy, gz, radius in torso.gas:
        centre = np.array([cx + gx * a, float(torso.body_y(gz)) + gy * b, gz])
        items.append((centre, np.array([radius, 0.8 * radius, radius]), -950.0))
    for centre, semi, hu in items:
        _paint(vol, grid, axes, centre - semi, centre + semi, _ellipsoid(centre, semi), hu)


def _paint_mediastinum(vol: F32, grid: CtGrid, axes: tuple[F32, F32, F32], torso: Torso) -> None:
    """Heart (over the lungs) and the descending aorta, a tube left-anterior of the spine."""
    a, b = torso.half_width, torso.half_depth
    dome_l = torso.dome_z[1]
    centre = np.array(
        [torso.centre_x + 0.2 * a, float(torso.body_y(dome_l)) - 0.35 * b, dome_l + 45.0]
    )
    semi = np.array([60.0, 50.0, 60.0])
    _paint(vol, grid, axes, centre - semi, centre + semi, _ellipsoid(centre, semi), HU_SOFT)
    x, y, z = axes
    radius = torso.aorta_radius
    for k in range(grid.slices):
        zk = float(z[k, grid.rows // 2, 0])
        sx, sy = (float(v) for v in torso.spine_at(zk))
        ax, ay = sx + 22.0, sy - 18.0 - radius
        reach = radius + 3.0
        box = grid.index_box((ax - reach, ay - reach, zk - 50), (ax + reach, ay + reach, zk + 50))
        if box is None:
            continue
        _, rs, cs = box
        f = np.sqrt((x[0, :, cs] - ax) ** 2 + (y[0, rs, :] - ay) ** 2) - radius
        _blend(vol[k, rs, cs], _occupancy(f.astype(np.float32), grid.edge), torso.aorta_hu)


def _local(vertebra: PlacedVertebra, x: F32, y: F32, z: F32) -> tuple[F32, F32, F32]:
    """Local ``(u, v, w)`` of broadcast LPS coordinates."""
    c = vertebra.centre.astype(np.float32)
    m = vertebra.axes.astype(np.float32)
    dx, dy, dz = x - c[0], y - c[1], z - c[2]
    return (
        dx * m[0, 0] + dy * m[0, 1] + dz * m[0, 2],
        dx * m[1, 0] + dy * m[1, 1] + dz * m[1, 2],
        dx * m[2, 0] + dy * m[2, 1] + dz * m[2, 2],
    )


def _local_box(
    vertebra: PlacedVertebra, lo: FloatArray, hi: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """LPS bounding box of a local ``(u, v, w)`` box."""
    corners = np.array(np.meshgrid(*zip(lo, hi, strict=True), indexing="ij")).reshape(3, -1).T
    pts = vertebra.to_patient(corners)
    return pts.min(axis=0), pts.max(axis=0)


def _radial(shape: BodyShape, u: F32, v: F32) -> F32:
    """Approximate signed distance (mm) to the elliptic wall of the body."""
    r = np.sqrt((u / shape.half_width) ** 2 + (v / shape.half_depth) ** 2)
    return ((r - 1.0) * min(shape.half_width, shape.half_depth)).astype(np.float32)


def _body_sdf(shape: BodyShape, u: F32, v: F32, w: F32) -> F32:
    """Rounded-rim signed distance (mm) of the vertebral body."""
    d_r = _radial(shape, u, v)
    d_v = np.maximum(w - shape.top(u, v), shape.bottom(u, v) - w).astype(np.float32)
    rho = np.float32(shape.corner)
    qr, qv = d_r + rho, d_v + rho
    outside = np.sqrt(np.maximum(qr, 0.0) ** 2 + np.maximum(qv, 0.0) ** 2)
    return (outside + np.minimum(np.maximum(qr, qv), 0.0) - rho).astype(np.float32)


def _capsule(u: F32, v: F32, w: F32, a: FloatArray, b: FloatArray, radius: float) -> F32:
    ab = b - a
    t = ((u - a[0]) * ab[0] + (v - a[1]) * ab[1] + (w - a[2]) * ab[2]) / float(ab @ ab)
    t = np.clip(t, 0.0, 1.0)
    du, dv, dw = u - (a[0] + t * ab[0]), v - (a[1] + t * ab[1]), w - (a[2] + t * ab[2])
    return (np.sqrt(du * du + dv * dv + dw * dw) - radius).astype(np.float32)


def posterior_capsules(vertebra: PlacedVertebra) -> list[tuple[FloatArray, FloatArray, float]]:
    """Posterior elements as capsules ``(start, end, radius)`` in the local frame.

    Pedicles, laminae, superior/inferior articular processes, transverse processes and the
    spinous process (longer and steeper on thoracic levels).

    Parameters
    ----------
    vertebra : PlacedVertebra
        The vertebra.

    Returns
    -------
    list of tuple
        Local ``(u, v, w)`` segment ends and radius (mm).
    """
    s = vertebra.shape
    h, ad, aw = s.height, s.half_depth, s.half_width
    thoracic = vertebra.thoracic
    ped_r = 0.18 * ad + 1.5
    lamina_v = -ad - 20.0 - 0.2 * ad
    tip_v = lamina_v - (22.0 if thoracic else 20.0) - 0.4 * ad
    tip_w = -1.1 * h if thoracic else -0.3 * h
    out: list[tuple[FloatArray, FloatArray, float]] = []
    for side in (-1.0, 1.0):
        root = np.array([side * 0.55 * aw, -0.7 * ad, 0.15 * h])
        foot = np.array([side * 0.6 * aw, -ad - 9.0, 0.15 * h])
        out.append((root, foot, ped_r))
        out.append((foot, np.array([0.0, lamina_v, 0.0]), 2.8))
        facet_u, facet_v = foot[0], foot[1] - 3.0
        facet_top = np.array([facet_u, facet_v, 0.5 * h + 2.0])
        out.append((facet_top, np.array([facet_u, facet_v, -0.5 * h - 1.0]), 3.0))
        tp_tip = rib_root_local(vertebra, side)
        out.append((foot, tp_tip, 3.5 if thoracic else 3.0))
    out.append((np.array([0.0, lamina_v, 0.0]), np.array([0.0, tip_v, tip_w]), 3.5))
    if not thoracic:
        # Lumbar spinous processes are tall plates: a second, parallel capsule.
        out.append((np.array([0.0, lamina_v, -0.35 * h]), np.array([0.0, tip_v, -0.55 * h]), 3.0))
    return out


def rib_root_local(vertebra: PlacedVertebra, side: float) -> FloatArray:
    """Local ``(u, v, w)`` of the tip of a transverse process (where a rib meets it).

    Parameters
    ----------
    vertebra : PlacedVertebra
        The vertebra.
    side : float
        -1 for the patient's right, +1 for the left.

    Returns
    -------
    numpy.ndarray
        ``(3,)`` local point.
    """
    s = vertebra.shape
    lateral = s.half_width + (12.0 if vertebra.thoracic else 16.0)
    back = s.half_depth + (14.0 if vertebra.thoracic else 6.0)
    return np.array([side * lateral, -back, 0.1 * s.height])


def _paint_vertebra(
    vol: F32,
    grid: CtGrid,
    axes: tuple[F32, F32, F32],
    vertebra: PlacedVertebra,
    torso: Torso,
    labels: npt.NDArray[np.uint8] | None,
    label: int,
) -> None:
    s = vertebra.shape
    reach = s.half_width + 22.0
    lo = np.array([-reach, -(s.half_depth + 60.0 + 0.6 * s.half_depth), -1.7 * s.height - 6.0])
    hi = np.array([reach, s.half_depth + 3.0, 0.5 * s.height + 8.0])
    box = grid.index_box(*_local_box(vertebra, lo, hi))
    if box is None:
        return
    ks, rs, cs = box
    x, y, z = axes
    u, v, w = _local(vertebra, x[:, :, cs], y[:, rs, :], z[ks, rs, :])
    f = _body_sdf(s, u, v, w)
    for a, b, radius in posterior_capsules(vertebra):
        # Only the capsule's own box (with the anti-aliasing margin) can change f.
        reach = radius + 2.0 * grid.edge
        own = grid.index_box(
            *_local_box(vertebra, np.minimum(a, b) - reach, np.maximum(a, b) + reach)
        )
        if own is None:
            continue
        sub = tuple(
            slice(max(o.start - r.start, 0), max(min(o.stop, r.stop) - r.start, 0))
            for o, r in zip(own, box, strict=True)
        )
        np.minimum(f[sub], _capsule(u[sub], v[sub], w[sub], a, b, radius), out=f[sub])
    edge = grid.edge
    outer = _occupancy(f, edge)
    inner = _occupancy(f + np.float32(torso.cortex_mm), edge)
    target = vol[ks, rs, cs]
    _blend(target, outer, torso.cortex_hu)
    _blend(target, inner, vertebra.cancellous_hu)
    if labels is not None:
        region = labels[ks, rs, cs]
        region[f < 0.0] = label


def _paint_disc(
    vol: F32,
    grid: CtGrid,
    axes: tuple[F32, F32, F32],
    upper: PlacedVertebra,
    lower: PlacedVertebra,
) -> None:
    """Paint the disc: it fills exactly the space between the two end plates, within the rims."""
    su, sl = upper.shape, lower.shape
    lo_u = np.array([-su.half_width - 2, -su.half_depth - 2, -0.5 * su.height - 1])
    hi_u = np.array([su.half_width + 2, su.half_depth + 2, 0.0])
    lo_l = np.array([-sl.half_width - 2, -sl.half_depth - 2, 0.0])
    hi_l = np.array([sl.half_width + 2, sl.half_depth + 2, 0.5 * sl.height + 1])
    a0, a1 = _local_box(upper, lo_u, hi_u)
    b0, b1 = _local_box(lower, lo_l, hi_l)
    box = grid.index_box(np.minimum(a0, b0), np.maximum(a1, b1))
    if box is None:
        return
    ks, rs, cs = box
    x, y, z = axes
    xs, ys, zs = x[:, :, cs], y[:, rs, :], z[ks, rs, :]
    u1, v1, w1 = _local(upper, xs, ys, zs)
    u2, v2, w2 = _local(lower, xs, ys, zs)
    below_upper = w1 - su.bottom(u1, v1)
    above_lower = sl.top(u2, v2) - w2
    radial = np.minimum(_radial(su, u1, v1), _radial(sl, u2, v2)) - 0.5
    f = np.maximum(np.maximum(below_upper, above_lower), radial).astype(np.float32)
    _blend(vol[ks, rs, cs], _occupancy(f, grid.edge), HU_DISC)


def _paint_rib(
    vol: F32,
    grid: CtGrid,
    axes: tuple[F32, F32, F32],
    vertebra: PlacedVertebra,
    torso: Torso,
    side: float,
) -> None:
    """Paint one rib.

    An elliptic arc round the chest wall from the tip of the transverse process, falling
    anteriorly, with a flat oval cross-section (3 mm radial, 5 mm vertical half-axes).
    """
    root = vertebra.to_patient(rib_root_local(vertebra, side))
    z_root = float(root[2])
    by = float(torso.body_y(z_root))
    cx = torso.centre_x
    a_r = torso.half_width - torso.fat - 10.0
    y_ant = by - torso.half_depth + torso.fat + 10.0
    sin0 = min(abs(float(root[0]) - cx) / a_r, 0.95)
    cos0 = math.sqrt(1.0 - sin0 * sin0)
    y_post = (2.0 * float(root[1]) - y_ant * (1.0 - cos0)) / (1.0 + cos0)
    cy, b_r = 0.5 * (y_post + y_ant), 0.5 * (y_post - y_ant)
    if b_r <= 10.0:
        return
    theta0 = math.asin(sin0)
    level = int(vertebra.level[1:])
    theta1 = {11: 0.45 * math.pi, 12: 0.32 * math.pi}.get(level, 0.78 * math.pi)
    drop = 30.0 + 2.5 * level
    half_r, half_z = 3.0, 5.0
    x, y, z = axes
    px = (x[0, 0, :] - cx)[None, :] * side
    py = (y[0, :, 0] - cy)[:, None]
    rho_x, rho_y = px / a_r, py / b_r
    rho = np.sqrt(rho_x**2 + rho_y**2) + 1e-6
    grad = np.sqrt((rho_x / a_r) ** 2 + (rho_y / b_r) ** 2) / rho
    d_rho = (rho - 1.0) / np.maximum(grad, 1e-6)
    theta = np.arctan2(rho_x, rho_y)
    mask = (
        (np.abs(d_rho) < half_r + 2 * grid.edge) & (theta >= theta0) & (theta <= theta1) & (px > 0)
    )
    rr, cc = np.nonzero(mask)
    if rr.size == 0:
        return
    frac = (theta[rr, cc] - theta0) / (theta1 - theta0)
    z_rib = (z_root - drop * frac**1.3).astype(np.float32)
    zpix = z[:, rr, 0]  # (K, n)
    near = np.abs(zpix - z_rib[None, :]) < half_z + 2 * grid.edge
    ks = np.nonzero(near.any(axis=1))[0]
    if ks.size == 0:
        return
    k0, k1 = int(ks[0]), int(ks[-1]) + 1
    dz = zpix[k0:k1] - z_rib[None, :]
    dr = d_rho[rr, cc].astype(np.float32)[None, :]
    f = ((np.sqrt((dr / half_r) ** 2 + (dz / half_z) ** 2) - 1.0) * half_r).astype(np.float32)
    flat = rr * grid.columns + cc
    view = vol.reshape(grid.slices, -1)
    sub = view[k0:k1][:, flat]
    _blend(sub, _occupancy(f, grid.edge), torso.cortex_hu)
    _blend(sub, _occupancy(f + 1.0, grid.edge), vertebra.cancellous_hu * 0.9)
    view[k0:k1, flat] = sub


# --- acquisition ----------------------------------------------------------------------------


def finish(
    vol: F32,
    grid: CtGrid,
    rng: np.random.Generator,
    *,
    noise_sigma: float,
    kernel_blur: float,
    blur: bool = True,
) -> npt.NDArray[np.int16]:
    """Blur (slice profile and reconstruction kernel), add noise, round to int16 HU.

    Parameters
    ----------
    vol : numpy.ndarray
        ``float32`` HU; blurred in place.
    grid : CtGrid
        The grid (slice thickness and spacing give the slice profile).
    rng : numpy.random.Generator
        Source of the noise.
    noise_sigma : float
        Standard deviation of the noise (HU); 0 for none.
    kernel_blur : float
        In-plane Gaussian sigma in pixels (soft kernels blur more).
    blur : bool
        Apply the blur at all.

    Returns
    -------
    numpy.ndarray
        ``int16`` HU clipped to ``[-1024, 3071]``.
    """
    if blur:
        for k0 in range(0, grid.slices, _SLAB):
            k1 = min(grid.slices, k0 + _SLAB)
            vol[k0:k1] = ndimage.gaussian_filter(vol[k0:k1], (0.0, kernel_blur, kernel_blur))
        sigma_z = max(grid.slice_thickness, grid.slice_spacing) / (2.355 * grid.slice_spacing)
        for r0 in range(0, grid.rows, 64):
            r1 = min(grid.rows, r0 + 64)
            vol[:, r0:r1] = ndimage.gaussian_filter1d(vol[:, r0:r1], sigma_z, axis=0)
    out = np.empty(grid.shape, dtype=np.int16)
    corr = 0.7
    gain = np.float32(noise_sigma * 2.0 * corr * math.sqrt(math.pi))
    for k0 in range(0, grid.slices, _SLAB):
        k1 = min(grid.slices, k0 + _SLAB)
        slab = vol[k0:k1]
        if noise_sigma > 0:
            noise = rng.standard_normal((k1 - k0, grid.rows, grid.columns), dtype=np.float32)
            slab = slab + gain * ndimage.gaussian_filter(noise, (0.0, corr, corr))
        out[k0:k1] = np.clip(np.rint(slab), HU_MIN, HU_MAX).astype(np.int16)
    return out
