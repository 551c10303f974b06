"""Geometry of a synthetic vertebral column in 3D for the CT phantoms (issue 17).

Everything here is in millimetres, in patient coordinates (DICOM LPS: x to the patient's
left, y posterior, z superior). `build_column` lays out T1–L5 along a smooth centre line
with thoracic kyphosis, lumbar lordosis and optionally a scoliotic lateral curve, then keeps
the requested levels plus one partly visible neighbour above and below.

Each vertebral body lives in its own frame (`PlacedVertebra.axes`): ``u`` to the left, ``v``
anterior and ``w`` superior along the local tangent of the centre line, so its end plates
are perpendicular to the curve. In that frame the body is an elliptic cylinder with rounded
rims, between two end-plate surfaces (`BodyShape.top` / `BodyShape.bottom`):

- normal end plates are slightly concave, and thoracic bodies mildly wedged (G ≈ 0.85–0.97);
- a **wedge** fracture tilts the superior end plate down anteriorly, a **crush** fracture
  posteriorly (optionally after the whole plate sank, ``all_reduced``), a **biconcave**
  fracture depresses the centre of both end plates; the amount is solved so that the
  Genant index of the keypoints equals the request (the vocabulary, bands and cut-offs of
  `spinexr.training.phantoms.fractures` and `spinexr.pipeline.vertebrae.genant`).

The six keypoints follow `genant.KEYPOINT_NAMES` (anterior top, anterior bottom, middle top,
middle bottom, posterior top, posterior bottom): on the body's mid-sagittal plane
(``u = 0``), on the end-plate surfaces, at ``v = ±(half_depth − corner)`` (where the rounded
rim ends and the outline *is* the end plate, as on the radiograph phantoms) and at ``v = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy.interpolate import CubicSpline

from spinexr.pipeline.vertebrae import genant
from spinexr.pipeline.vertebrae.genant import Deformity, GenantGrade
from spinexr.pipeline.vertebrae.levels import LEVELS_TOP_DOWN
from spinexr.training.phantoms.fractures import (
    FRACTURE_TYPES,
    GRADE_BANDS,
    FractureError,
    random_fracture_type,
)

FloatArray = npt.NDArray[np.float64]

MODEL_LEVELS: Final = LEVELS_TOP_DOWN[LEVELS_TOP_DOWN.index("T1") :]
"""Levels the column model holds, top to bottom (T1–L5)."""

REQUESTABLE_LEVELS: Final = MODEL_LEVELS[1:-1]
"""Levels that may be requested fully in view (T2–L4: each keeps a neighbour either side)."""

ANTERIOR: Final = np.array([0.0, -1.0, 0.0])
"""Anterior direction in LPS, the fixed axis the vertebral frames are built from."""

_BICONCAVE_RADIUS = 0.8
"""A biconcave depression reaches this share of the body's elliptic radius (the side
keypoints sit further out, so only the middle height falls)."""
_MAX_CONCAVITY_FLAT = 0.015
"""Wedge and crush keep at most this share of the height as end-plate concavity."""
_SHIFT_SHARE = 0.5
_TOLERANCE = 1e-7
_JUNCTION = ("T11", "T12", "L1", "L2")

# Per-level sizes (mm) at knots on the level index (0 = T1 … 16 = L5), adult means.
_KNOTS = (0.0, 5.0, 11.0, 12.0, 16.0)
_HEIGHT = (14.5, 17.5, 23.0, 24.5, 27.0)
_DISC = (3.5, 4.5, 6.0, 8.0, 11.0)
_HALF_DEPTH = (8.0, 11.0, 14.0, 15.0, 17.0)
_HALF_WIDTH = (13.0, 14.5, 19.0, 20.0, 25.0)


@dataclass(frozen=True)
class LevelFracture:
    """A compression fracture to make at a named level.

    Attributes
    ----------
    level : str
        Level name, one of the fully visible levels of the phantom (``"T12"``...).
    genant : float
        Requested Genant index of the keypoints, in ``(0.1, 0.95)``; `GRADE_BANDS` gives the
        range of each grade.
    deformity : Deformity
        Wedge, biconcave or crush (`FRACTURE_TYPES`).
    all_reduced : float
        Crush only: share of the body's height that all three heights lose before the
        posterior height falls further.
    """

    level: str
    genant: float
    deformity: Deformity
    all_reduced: float = 0.0


@dataclass(frozen=True)
class BodyShape:
    """A vertebral body in its own frame (mm); see the module docstring.

    Attributes
    ----------
    height : float
        End plate to end plate at the rim before any deformation.
    half_depth, half_width : float
        Semi-axes of the elliptic cross-section (anterior–posterior, left–right).
    corner : float
        Radius of the rounded rim; the side keypoints sit this far inside the walls.
    concavity : float
        Normal depth of each end plate at its centre.
    wedge : float
        Drop of the superior end plate at the anterior keypoint (zero at the posterior one).
    crush : float
        Drop of the superior end plate at the posterior keypoint (zero at the anterior one).
    collapse : float
        Uniform drop of the superior end plate.
    depression : float
        Extra central depression of each end plate (biconcave).
    """

    height: float
    half_depth: float
    half_width: float
    corner: float
    concavity: float
    wedge: float = 0.0
    crush: float = 0.0
    collapse: float = 0.0
    depression: float = 0.0

    @property
    def keypoint_v(self) -> tuple[float, float, float]:
        """The ``v`` of the anterior, middle and posterior keypoint columns."""
        side = self.half_depth - self.corner
        return side, 0.0, -side

    def _profiles(
        self, u: npt.ArrayLike, v: npt.ArrayLike
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        uu = np.asarray(u, dtype=np.float64)
        vv = np.asarray(v, dtype=np.float64)
        r2 = (uu / self.half_width) ** 2 + (vv / self.half_depth) ** 2
        concave = np.maximum(0.0, 1.0 - r2)
        bicon = np.maximum(0.0, 1.0 - r2 / _BICONCAVE_RADIUS**2)
        v_a = self.keypoint_v[0]
        anterior_share = (vv + v_a) / (2.0 * v_a)
        return concave, bicon, anterior_share

    def top(self, u: npt.ArrayLike, v: npt.ArrayLike) -> FloatArray:
        """Height ``w`` of the superior end plate at ``(u, v)``.

        Parameters
        ----------
        u, v : array-like
            Local coordinates (broadcast together).

        Returns
        -------
        numpy.ndarray
            ``w`` of the surface.
        """
        concave, bicon, ant = self._profiles(u, v)
        return (
            0.5 * self.height
            - self.collapse
            - self.wedge * ant
            - self.crush * (1.0 - ant)
            - self.concavity * concave
            - self.depression * bicon
        )

    def bottom(self, u: npt.ArrayLike, v: npt.ArrayLike) -> FloatArray:
        """Height ``w`` of the inferior end plate at ``(u, v)``.

        Parameters
        ----------
        u, v : array-like
            Local coordinates (broadcast together).

        Returns
        -------
        numpy.ndarray
            ``w`` of the surface.
        """
        concave, bicon, _ = self._profiles(u, v)
        return -0.5 * self.height + self.concavity * concave + self.depression * bicon

    def local_keypoints(self) -> FloatArray:
        """Six keypoints as ``(v, w)`` on the mid-sagittal plane, `KEYPOINT_NAMES` order.

        Returns
        -------
        numpy.ndarray
            ``(6, 2)`` array.
        """
        out = []
        for v in self.keypoint_v:
            out.append((v, float(self.top(0.0, v))))
            out.append((v, float(self.bottom(0.0, v))))
        return np.array(out, dtype=np.float64)

    def heights(self) -> tuple[float, float, float]:
        """Anterior, middle and posterior heights between the keypoints (mm).

        Returns
        -------
        tuple of float
            ``(h_a, h_m, h_p)``.
        """
        kp = self.local_keypoints()
        h = kp[0::2, 1] - kp[1::2, 1]
        return float(h[0]), float(h[1]), float(h[2])

    def genant_index(self) -> float:
        """Genant's index of `heights` (`genant.genant_index`).

        Returns
        -------
        float
            ``min / max`` of the three heights.
        """
        return genant.genant_index(self.heights())

    def top_drop(self) -> tuple[float, float]:
        """Drop of the superior end plate at the anterior and posterior keypoints.

        Returns
        -------
        tuple of float
            ``(anterior, posterior)`` in mm, against the undeformed body.
        """
        return self.collapse + self.wedge, self.collapse + self.crush


@dataclass(frozen=True)
class PlacedVertebra:
    """A vertebra placed in the patient.

    Attributes
    ----------
    level : str
        Level name.
    shape : BodyShape
        Body geometry in the local frame.
    centre : numpy.ndarray
        ``(3,)`` LPS position of the local origin (the undeformed body's centre), mm.
    axes : numpy.ndarray
        ``(3, 3)``: rows are the unit ``u`` (left), ``v`` (anterior), ``w`` (superior) axes.
    complete : bool
        Whether the whole vertebra is meant to be in the field of view (the partly visible
        neighbours above and below are not).
    cancellous_hu : float
        Hounsfield units of its cancellous bone.
    fracture : LevelFracture or None
        The fracture requested here (None for none).
    """

    level: str
    shape: BodyShape
    centre: FloatArray
    axes: FloatArray
    complete: bool
    cancellous_hu: float
    fracture: LevelFracture | None = None

    @property
    def thoracic(self) -> bool:
        """Whether the level is thoracic (it carries ribs)."""
        return self.level.startswith("T")

    def to_patient(self, local: npt.ArrayLike) -> FloatArray:
        """Map local ``(u, v, w)`` points to LPS.

        Parameters
        ----------
        local : array-like
            ``(..., 3)`` local points.

        Returns
        -------
        numpy.ndarray
            ``(..., 3)`` LPS points.
        """
        return np.asarray(local, dtype=np.float64) @ self.axes + self.centre

    def keypoints(self) -> FloatArray:
        """Six keypoints in LPS (mm), `genant.KEYPOINT_NAMES` order.

        Returns
        -------
        numpy.ndarray
            ``(6, 3)`` array.
        """
        vw = self.shape.local_keypoints()
        local = np.column_stack([np.zeros(6), vw[:, 0], vw[:, 1]])
        return self.to_patient(local)


@dataclass(frozen=True)
class SpineColumn:
    """The placed vertebrae and the centre line they sit on.

    Attributes
    ----------
    vertebrae : tuple of PlacedVertebra
        Top to bottom: a partial neighbour, the requested levels, a partial neighbour.
    curve : numpy.ndarray
        ``(M, 3)`` dense LPS samples of the centre line, top to bottom (every 0.2 mm of
        the layout parameter), through the centres of all vertebrae.
    disc_heights : tuple of float
        Undeformed height of the disc below each vertebra (mm).
    kyphosis_mm, lordosis_mm, scoliosis_mm : float
        Amplitudes of the sagittal and lateral curves.
    """

    vertebrae: tuple[PlacedVertebra, ...]
    curve: FloatArray
    disc_heights: tuple[float, ...]
    kyphosis_mm: float
    lordosis_mm: float
    scoliosis_mm: float

    def level(self, name: str) -> PlacedVertebra:
        """Return the vertebra of a level.

        Parameters
        ----------
        name : str
            Level name.

        Returns
        -------
        PlacedVertebra
            The vertebra.

        Raises
        ------
        KeyError
            When the column has no such level.
        """
        for v in self.vertebrae:
            if v.level == name:
                return v
        raise KeyError(name)

    def curve_span(self) -> tuple[FloatArray, FloatArray]:
        """Return the ends of the annotated centre line.

        They are the first vertebra's middle top keypoint and the last one's middle bottom
        keypoint.

        Returns
        -------
        tuple of numpy.ndarray
            Two ``(3,)`` LPS points.
        """
        return self.vertebrae[0].keypoints()[2], self.vertebrae[-1].keypoints()[3]


def level_range(first: str, last: str) -> tuple[str, ...]:
    """Return the levels from ``first`` to ``last`` inclusive.

    Parameters
    ----------
    first, last : str
        Level names within `REQUESTABLE_LEVELS`, ``first`` not below ``last``.

    Returns
    -------
    tuple of str
        The levels, top to bottom.

    Raises
    ------
    ValueError
        For an unknown level or a reversed range.
    """
    if first not in REQUESTABLE_LEVELS or last not in REQUESTABLE_LEVELS:
        raise ValueError(f"levels must lie within T2–L4, got {first}–{last}")
    i, j = REQUESTABLE_LEVELS.index(first), REQUESTABLE_LEVELS.index(last)
    if i > j:
        raise ValueError(f"level range {first}–{last} runs upwards")
    return REQUESTABLE_LEVELS[i : j + 1]


def build_column(
    rng: np.random.Generator,
    levels: Sequence[str],
    fractures: Sequence[LevelFracture],
    *,
    origin: tuple[float, float, float],
    scoliosis: bool,
) -> SpineColumn:
    """Lay out a vertebral column in the patient.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of anatomical variation (drawn in a fixed order whatever the fractures).
    levels : sequence of str
        Contiguous fully visible levels within T2–L4, top to bottom (`level_range`).
    fractures : sequence of LevelFracture
        Fractures, each at one of ``levels`` (at most one per level).
    origin : tuple of float
        LPS point of the layout's top (the superior end plate of T1 before the curves).
    scoliosis : bool
        Add a lateral curve of 8–25 mm with axial rotation (otherwise at most 2 mm).

    Returns
    -------
    SpineColumn
        The placed vertebrae (one partial neighbour either side) and the centre line.

    Raises
    ------
    FractureError
        For a fracture at a level not in ``levels``, a repeated level, an unknown type, or a
        Genant index outside ``(0.1, 0.95)``.
    """
    levels = tuple(levels)
    first = MODEL_LEVELS.index(levels[0])
    model = MODEL_LEVELS[first - 1 : first + len(levels) + 1]
    if model[1:-1] != levels:
        raise ValueError(f"levels {levels} are not contiguous")
    by_level = _check_fractures(levels, fractures)

    n = len(MODEL_LEVELS)
    idx = np.arange(n, dtype=np.float64)
    scale = rng.uniform(0.9, 1.1)
    jitter = rng.uniform(0.97, 1.03, size=(n, 4))
    heights = np.interp(idx, _KNOTS, _HEIGHT) * scale * jitter[:, 0]
    discs = np.interp(idx, _KNOTS, _DISC) * scale * jitter[:, 1]
    half_depth = np.interp(idx, _KNOTS, _HALF_DEPTH) * scale * jitter[:, 2]
    half_width = np.interp(idx, _KNOTS, _HALF_WIDTH) * scale * jitter[:, 3]
    concavity = rng.uniform(0.01, 0.04, size=n) * heights
    wedge_ratio = rng.uniform(0.9, 0.99, size=n)
    corner = rng.uniform(0.08, 0.13) * half_depth
    density = rng.uniform(110.0, 300.0)
    hu_jitter = rng.normal(0.0, 12.0, size=n)
    kyphosis = rng.uniform(12.0, 38.0)
    lordosis = rng.uniform(8.0, 24.0)
    lean = math.radians(rng.uniform(-2.0, 2.0))
    sco_amp = rng.uniform(8.0, 25.0) * rng.choice([-1.0, 1.0])
    sco_apex = int(rng.integers(5, 14))
    sco_up, sco_down = int(rng.integers(3, 6)), int(rng.integers(3, 6))
    small_amp = rng.uniform(-2.0, 2.0)
    if not scoliosis:
        sco_amp = small_amp

    # Straight layout (undeformed), s measured downwards from the top of T1.
    s_top = np.concatenate([[0.0], np.cumsum(heights + discs)[:-1]])
    s_mid = s_top + 0.5 * heights
    junction = s_top[MODEL_LEVELS.index("L1")] - 0.5 * discs[MODEL_LEVELS.index("T12")]
    sagittal = CubicSpline(
        [s_mid[0], s_mid[6], junction, s_mid[14], s_mid[16]],
        [0.0, kyphosis, 0.0, -lordosis, -0.4 * lordosis],
        bc_type="natural",
    )
    lo, hi = max(1, sco_apex - sco_up), min(n - 2, sco_apex + sco_down)
    lateral = CubicSpline(
        [s_mid[0], s_mid[lo], s_mid[sco_apex], s_mid[hi], s_mid[-1]],
        [0.0, 0.0, sco_amp, 0.0, 0.0],
        bc_type="natural",
    )
    s_grid = np.arange(s_top[0] - 80.0, s_top[-1] + heights[-1] + 80.0, 0.2)
    x_lat = lateral(s_grid)
    curve = np.column_stack(
        [
            origin[0] + x_lat + s_grid * math.tan(lean),
            origin[1] + sagittal(s_grid),
            origin[2] - s_grid,
        ]
    )
    steps = np.linalg.norm(np.diff(curve, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    tangent = -np.gradient(curve, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)

    # Shapes, with fractures solved to their Genant index.
    shapes: list[BodyShape] = []
    for name in model:
        j = MODEL_LEVELS.index(name)
        shape = BodyShape(
            height=float(heights[j]),
            half_depth=float(half_depth[j]),
            half_width=float(half_width[j]),
            corner=float(corner[j]),
            concavity=float(concavity[j]),
            wedge=float((1.0 - wedge_ratio[j]) * heights[j]) if name.startswith("T") else 0.0,
        )
        fracture = by_level.get(name)
        shapes.append(shape if fracture is None else fracture_shape(shape, fracture))

    # Arc-length layout: a fractured body takes part of its height loss from the disc
    # above (the vertebrae above move down), keeping at least half of that disc.
    jm = [MODEL_LEVELS.index(name) for name in model]
    sigma = float(np.interp(s_top[jm[0]], s_grid, arc))
    vertebrae: list[PlacedVertebra] = []
    for k, (name, shape) in enumerate(zip(model, shapes, strict=True)):
        j = jm[k]
        fracture = by_level.get(name)
        if fracture is not None and k > 0:
            shift = _SHIFT_SHARE * 0.5 * sum(shape.top_drop())
            sigma -= min(shift, 0.5 * float(discs[jm[k - 1]]))
        centre_sigma = sigma + 0.5 * shape.height
        s_centre = float(np.interp(centre_sigma, arc, s_grid))
        centre = np.array([np.interp(s_centre, s_grid, curve[:, a]) for a in range(3)])
        t = np.array([np.interp(s_centre, s_grid, tangent[:, a]) for a in range(3)])
        psi = math.radians(0.5) * float(lateral(s_centre)) if scoliosis else 0.0
        axes = _frame(t, psi)
        hu = density + hu_jitter[j]
        if fracture is not None and genant.grade(fracture.genant) is not GenantGrade.NORMAL:
            hu *= 1.0 + 0.3 * (1.0 - fracture.genant)
        vertebrae.append(
            PlacedVertebra(
                level=name,
                shape=shape,
                centre=centre,
                axes=axes,
                complete=name in levels,
                cancellous_hu=float(hu),
                fracture=fracture,
            )
        )
        sigma += shape.height + float(discs[j])
    return SpineColumn(
        vertebrae=tuple(vertebrae),
        curve=curve,
        disc_heights=tuple(float(discs[j]) for j in jm),
        kyphosis_mm=float(kyphosis),
        lordosis_mm=float(lordosis),
        scoliosis_mm=float(sco_amp),
    )


def fracture_shape(shape: BodyShape, fracture: LevelFracture) -> BodyShape:
    """Deform a body until the Genant index of its keypoints equals the request.

    The body first loses its physiological wedge (equal side heights); wedge and crush keep
    at most 1.5 % of the height as concavity, so the middle height never becomes the
    shortest by accident (as `spinexr.training.phantoms.fractures` does on radiographs).

    Parameters
    ----------
    shape : BodyShape
        The normal body.
    fracture : LevelFracture
        What to make.

    Returns
    -------
    BodyShape
        The fractured body; its `BodyShape.genant_index` equals ``fracture.genant`` within
        1e-6.

    Raises
    ------
    FractureError
        For a type that is not a fracture type, an index outside ``(0.1, 0.95)`` or an
        ``all_reduced`` outside ``[0, 0.4]``.
    """
    _check_spec(fracture)
    h = shape.height
    base = replace(shape, wedge=0.0, crush=0.0, collapse=0.0, depression=0.0)
    flat = min(shape.concavity, _MAX_CONCAVITY_FLAT * h)
    family: Callable[[float], BodyShape]
    if fracture.deformity is Deformity.WEDGE:
        t_max = 0.92 * h

        def family(t: float) -> BodyShape:
            return replace(base, concavity=flat, wedge=t)

    elif fracture.deformity is Deformity.BICONCAVE:
        t_max = 0.48 * h - base.concavity

        def family(t: float) -> BodyShape:
            return replace(base, depression=t)

    else:
        drop = fracture.all_reduced * h
        t_max = 0.92 * (h - drop)

        def family(t: float) -> BodyShape:
            return replace(base, concavity=flat, collapse=drop, crush=t)

    lo, hi = 0.0, t_max
    target = fracture.genant
    if not family(hi).genant_index() <= target < family(lo).genant_index():
        raise FractureError(f"Genant index {target} is out of reach for this body")
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if family(mid).genant_index() > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < _TOLERANCE:
            break
    return family(hi)


def plan_level_fractures(
    rng: np.random.Generator,
    levels: Sequence[str],
    grades: Sequence[GenantGrade],
) -> list[LevelFracture]:
    """Choose levels, types and indices for fractures of the given grades.

    As `spinexr.training.phantoms.fractures.plan_fractures`: each level used once, the
    thoraco-lumbar junction (T11–L2) twice as likely, G uniform in the grade's
    `GRADE_BANDS` range, the type from `random_fracture_type`.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the choices.
    levels : sequence of str
        Candidate levels (the fully visible ones).
    grades : sequence of GenantGrade
        One per fracture; a normal grade makes a near-normal deformity (G 0.805–0.88).

    Returns
    -------
    list of LevelFracture
        At most one per level (fewer when the levels run out).
    """
    free = list(levels)
    out: list[LevelFracture] = []
    for grade in grades:
        if not free:
            break
        weights = np.array([2.0 if name in _JUNCTION else 1.0 for name in free])
        name = str(rng.choice(free, p=weights / weights.sum()))
        free.remove(name)
        lo, hi = GRADE_BANDS[grade]
        kind, share = random_fracture_type(rng)
        out.append(LevelFracture(name, float(rng.uniform(lo, hi)), kind, share))
    return out


def _frame(tangent: FloatArray, psi: float) -> FloatArray:
    """Return the rows u (left), v (anterior), w (superior) of a vertebral frame.

    w runs along ``tangent``, v comes from the fixed anterior axis, turned by ``psi``
    radians about w.
    """
    w = tangent / np.linalg.norm(tangent)
    v = ANTERIOR - float(ANTERIOR @ w) * w
    v /= np.linalg.norm(v)
    u = np.cross(w, v)
    v_rot = math.cos(psi) * v + math.sin(psi) * u
    u_rot = np.cross(w, v_rot)
    return np.stack([u_rot, v_rot, w])


def _check_spec(fracture: LevelFracture) -> None:
    if fracture.deformity not in FRACTURE_TYPES:
        raise FractureError(f"unknown fracture type {fracture.deformity!r}")
    if not 0.1 < fracture.genant < 0.95:
        raise FractureError(f"requested Genant index {fracture.genant} is outside (0.1, 0.95)")
    if not 0.0 <= fracture.all_reduced <= 0.4:
        raise FractureError(f"all_reduced {fracture.all_reduced} is outside [0, 0.4]")


def _check_fractures(
    levels: Sequence[str], fractures: Sequence[LevelFracture]
) -> dict[str, LevelFracture]:
    out: dict[str, LevelFracture] = {}
    for f in fractures:
        if f.level not in levels:
            raise FractureError(f"{f.level} is not a fully visible level ({', '.join(levels)})")
        if f.level in out:
            raise FractureError(f"{f.level} is given two fractures")
        _check_spec(f)
        out[f.level] = f
    return out
