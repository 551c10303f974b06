"""Synthetic chest / abdomen CT phantoms with vertebral fractures of known Genant grade.

The CT counterpart of the lateral radiograph phantoms, for the vertebral-fracture-on-CT work
(issue 17, ``method.md`` §8, Pisov et al. 2020). `make_ct_phantom` returns a volume in
Hounsfield units (``int16``, ``(slices, rows, columns)``, slice 0 the most superior) on a
random axial acquisition geometry, with the ground truth Pisov et al.'s two steps learn:

- per vertebra (`CtVertebraTruth`): the level name, the six keypoints in LPS mm
  (`genant.KEYPOINT_NAMES` order, on the body's mid-sagittal plane), the three heights, and
  the Genant index, grade and deformity type as `spinexr.pipeline.vertebrae.genant`
  computes them from those heights;
- the vertebral-body centre line where it crosses each slice (`CtPhantom.centreline`), for
  the localisation step.

The anatomy is in `ct_anatomy` (column, bodies, fractures), the voxel geometry in
`ct_grid` and the voxelisation in `ct_render`; `ct_dicom` writes the volume as a CT series
and a study with distractor series. Random streams (acquisition, anatomy, fractures, soft
tissue, noise, header, plan) are independent children of one seed, so the same seed gives
the same anatomy and noise whatever the fractures. `make_head_phantom` makes a head CT (no
spine) for refusal tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from spinexr.pipeline.vertebrae import genant
from spinexr.pipeline.vertebrae.genant import Deformity, GenantGrade
from spinexr.training.phantoms.ct_anatomy import (
    REQUESTABLE_LEVELS,
    LevelFracture,
    PlacedVertebra,
    SpineColumn,
    build_column,
    level_range,
    plan_level_fractures,
)
from spinexr.training.phantoms.ct_grid import CtGrid
from spinexr.training.phantoms.ct_render import (
    Torso,
    finish,
    random_torso,
    render_torso,
)
from spinexr.training.phantoms.image import SeedLike, child_rng, seed_label, seed_sequence
from spinexr.training.vertebrae.phantoms import (
    FRACTURE_COUNTS,
    FRACTURE_PROBABILITY,
    NEAR_NORMAL_PROBABILITY,
)

FloatArray = npt.NDArray[np.float64]

BodyPart = Literal["CHEST", "ABDOMEN", "HEAD"]
"""DICOM Body Part Examined of a phantom."""

KERNELS: Final = {"SOFT": 0.9, "STANDARD": 0.7, "B40f": 0.6, "BONE": 0.45, "LUNG": 0.4}
"""Convolution kernels drawn at random and the in-plane blur (pixels) each stands for."""

CHEST_STARTS: Final = ("T2", "T3", "T4", "T5", "T6")
CHEST_ENDS: Final = ("T11", "T12", "L1", "L2")
ABDOMEN_STARTS: Final = ("T10", "T11", "T12")
ABDOMEN_ENDS: Final = ("L3", "L4")
"""Where random chest and abdomen ranges start and end (10–15 vertebrae on chest CT, as in
Pisov et al.'s data)."""

_STREAMS = {
    "acquisition": 0,
    "anatomy": 1,
    "fractures": 2,
    "torso": 3,
    "noise": 4,
    "header": 5,
    "plan": 6,
}


@dataclass(frozen=True)
class CtAcquisition:
    """Reconstruction geometry of a thin axial series.

    Attributes
    ----------
    matrix : int
        Rows = columns.
    pixel_spacing : float
        In-plane spacing (mm), square pixels.
    slice_spacing : float
        Table increment between slices (mm).
    slice_thickness : float
        Nominal slice thickness (mm), at least the spacing.
    kernel : str
        Convolution kernel (a key of `KERNELS`).
    """

    matrix: int
    pixel_spacing: float
    slice_spacing: float
    slice_thickness: float
    kernel: str = "STANDARD"

    def __post_init__(self) -> None:
        if self.matrix < 32 or self.pixel_spacing <= 0 or self.slice_spacing <= 0:
            raise ValueError(f"bad acquisition {self}")
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown kernel {self.kernel!r}: use one of {sorted(KERNELS)}")


CtSize = Literal["full", "small"] | CtAcquisition
"""``"full"``: 512², 0.5–1.0 mm pixels, 0.8–3 mm slices; ``"small"`` (tests): 128², 2.4–3.4 mm
pixels, 2–3 mm slices; or an explicit `CtAcquisition`."""


@dataclass(frozen=True)
class CtVertebraTruth:
    """Ground truth of one vertebra.

    Attributes
    ----------
    level : str
        ``"T12"``...
    keypoints : numpy.ndarray
        ``(6, 3)`` LPS mm, `genant.KEYPOINT_NAMES` order.
    heights : tuple of float
        ``(h_a, h_m, h_p)`` in mm between the keypoints.
    genant_index : float
        ``min / max`` of the heights.
    grade : GenantGrade
        `genant.grade` of the index.
    deformity : Deformity
        `genant.deformity` of the heights (none when normal).
    centre : numpy.ndarray
        ``(3,)`` LPS centre of the undeformed body.
    axes : numpy.ndarray
        ``(3, 3)`` rows: left, anterior, superior unit vectors of the body.
    complete : bool
        Whether the whole vertebra is in the field of view (False for the partly visible
        neighbours above and below the requested range).
    fracture : LevelFracture or None
        What was requested at this level.
    """

    level: str
    keypoints: FloatArray
    heights: tuple[float, float, float]
    genant_index: float
    grade: GenantGrade
    deformity: Deformity
    centre: FloatArray
    axes: FloatArray
    complete: bool
    fracture: LevelFracture | None


@dataclass(frozen=True)
class CtPhantom:
    """A CT volume and its ground truth.

    Attributes
    ----------
    hu : numpy.ndarray
        ``int16`` Hounsfield units, ``(slices, rows, columns)``.
    grid : CtGrid
        Voxel geometry (``grid.affine()`` maps ``(k, r, c)`` to LPS).
    body_part : {"CHEST", "ABDOMEN", "HEAD"}
        Body Part Examined.
    kernel : str
        Convolution kernel.
    vertebrae : tuple of CtVertebraTruth
        Top to bottom (empty for a head).
    centreline : numpy.ndarray
        ``(slices, 3)`` LPS point where the vertebral-body centre line crosses each slice
        (NaN where the slice is above the first or below the last vertebra's middle
        keypoints).
    labels : numpy.ndarray or None
        ``uint8`` bone labels (``i + 1`` for ``vertebrae[i]``) when asked for.
    column : SpineColumn or None
        The anatomy (None for a head).
    torso : Torso or None
        The soft tissue around it (None for a head).
    seed : str
        Text form of the seed (entropy for UIDs).
    """

    hu: npt.NDArray[np.int16]
    grid: CtGrid
    body_part: BodyPart
    kernel: str
    vertebrae: tuple[CtVertebraTruth, ...]
    centreline: FloatArray
    labels: npt.NDArray[np.uint8] | None
    column: SpineColumn | None
    torso: Torso | None
    seed: str

    def vertebra(self, level: str) -> CtVertebraTruth:
        """Return the ground truth of a level.

        Parameters
        ----------
        level : str
            Level name.

        Returns
        -------
        CtVertebraTruth
            Its truth.

        Raises
        ------
        KeyError
            When the phantom has no such vertebra.
        """
        for v in self.vertebrae:
            if v.level == level:
                return v
        raise KeyError(level)


def random_acquisition(rng: np.random.Generator, size: CtSize) -> CtAcquisition:
    """Draw an acquisition for a size specification.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the draw.
    size : {"full", "small"} or CtAcquisition
        Specification; an explicit acquisition is returned as is.

    Returns
    -------
    CtAcquisition
        The geometry.

    Raises
    ------
    ValueError
        For an unknown size name.
    """
    if isinstance(size, CtAcquisition):
        return size
    kernel = str(rng.choice(list(KERNELS)))
    if size == "full":
        matrix, pixel = 512, round(float(rng.uniform(0.5, 1.0)), 4)
        spacing = round(float(rng.uniform(0.8, 3.0)), 2)
    elif size == "small":
        matrix, pixel = 128, round(float(rng.uniform(2.4, 3.4)), 4)
        spacing = round(float(rng.uniform(2.0, 3.0)), 2)
    else:
        raise ValueError(f"unknown CT size {size!r}: use 'full', 'small' or a CtAcquisition")
    thickness = spacing if rng.random() < 0.6 else min(3.0, round(spacing * 1.25, 2))
    return CtAcquisition(matrix, pixel, spacing, max(thickness, spacing), kernel)


def make_ct_phantom(
    rng_or_seed: SeedLike,
    *,
    size: CtSize = "small",
    levels: tuple[str, str] | None = None,
    body_part: Literal["CHEST", "ABDOMEN"] | None = None,
    fractures: Literal["random"] | Sequence[LevelFracture] = "random",
    scoliosis: bool | None = None,
    tilt_deg: float = 0.0,
    noise_sigma: float | None = None,
    blur: bool = True,
    labels: bool = False,
    centre_on_spine: bool = False,
    fracture_probability: float = FRACTURE_PROBABILITY,
) -> CtPhantom:
    """Make a chest or abdomen CT volume with its vertebral ground truth.

    Parameters
    ----------
    rng_or_seed : int, numpy.random.Generator or numpy.random.SeedSequence
        Seed; everything is deterministic for an int or sequence.
    size : {"small", "full"} or CtAcquisition
        Acquisition geometry (see `CtSize`).
    levels : tuple of str, optional
        First and last fully visible level (within T2–L4); drawn for the body part when
        omitted. One partly visible vertebra above and below is added.
    body_part : {"CHEST", "ABDOMEN"}, optional
        Drawn (chest 60 %) when omitted and no levels are given; from the levels otherwise
        (chest when the range starts at or above T9).
    fractures : "random" or sequence of LevelFracture
        Explicit fractures (empty for none), or the radiograph phantoms' random mix: with
        probability `FRACTURE_PROBABILITY` one to three fractures of grade mild, moderate or
        severe, and with `NEAR_NORMAL_PROBABILITY` one near-normal deformity.
    scoliosis : bool, optional
        Add a scoliotic curve; drawn (25 %) when omitted.
    tilt_deg : float
        Gantry tilt about the x axis (a refusal case when not 0).
    noise_sigma : float, optional
        Noise in HU; drawn in ``[10, 30]`` when omitted, 0 for none.
    blur : bool
        Blur by the slice profile and kernel.
    labels : bool
        Also return bone labels of the vertebrae (`CtPhantom.labels`).
    centre_on_spine : bool
        Centre the field of view on the spine rather than on the body (for small fields).
    fracture_probability : float
        With ``fractures="random"``: the probability of one to three fractures (the
        radiograph phantoms' `FRACTURE_PROBABILITY` by default).

    Returns
    -------
    CtPhantom
        Volume and ground truth.

    Raises
    ------
    FractureError
        For a fracture at a level that is not fully visible, or a bad fracture request.
    ValueError
        For a bad level range or size.
    """
    ss = seed_sequence(rng_or_seed)
    acq = random_acquisition(child_rng(ss, _STREAMS["acquisition"]), size)
    plan_rng = child_rng(ss, _STREAMS["plan"])
    part, names = _plan_levels(plan_rng, levels, body_part)

    anatomy_rng = child_rng(ss, _STREAMS["anatomy"])
    origin = (
        float(anatomy_rng.uniform(-15.0, 15.0)),
        float(anatomy_rng.uniform(-40.0, 10.0)),
        float(anatomy_rng.uniform(-50.0, 150.0)),
    )
    scoliotic = bool(anatomy_rng.random() < 0.25) if scoliosis is None else scoliosis
    margins = anatomy_rng.uniform(0.3, 0.7, size=2)
    fov_shift = anatomy_rng.uniform(-10.0, 10.0, size=2)
    specs = _fracture_specs(
        child_rng(ss, _STREAMS["fractures"]), names, fractures, fracture_probability
    )
    column = build_column(anatomy_rng, names, specs, origin=origin, scoliosis=scoliotic)
    torso = random_torso(child_rng(ss, _STREAMS["torso"]), column)

    grid = _grid(acq, column, torso, margins, fov_shift, tilt_deg, centre_on_spine)
    label_volume = np.zeros(grid.shape, dtype=np.uint8) if labels else None
    vol = render_torso(grid, torso, column, labels=label_volume)
    noise_rng = child_rng(ss, _STREAMS["noise"])
    sigma = float(noise_rng.uniform(10.0, 30.0)) if noise_sigma is None else noise_sigma
    hu = finish(vol, grid, noise_rng, noise_sigma=sigma, kernel_blur=KERNELS[acq.kernel], blur=blur)
    return CtPhantom(
        hu=hu,
        grid=grid,
        body_part=part,
        kernel=acq.kernel,
        vertebrae=tuple(vertebra_truth(v) for v in column.vertebrae),
        centreline=centreline_per_slice(column, grid),
        labels=label_volume,
        column=column,
        torso=torso,
        seed=seed_label(ss),
    )


def vertebra_truth(vertebra: PlacedVertebra) -> CtVertebraTruth:
    """Ground truth of a placed vertebra, measured from its keypoints in 3D.

    Parameters
    ----------
    vertebra : PlacedVertebra
        The vertebra.

    Returns
    -------
    CtVertebraTruth
        Keypoints, heights, and `genant`'s index, grade and deformity of those heights.
    """
    kp = vertebra.keypoints()
    h = np.linalg.norm(kp[0::2] - kp[1::2], axis=1)
    heights = (float(h[0]), float(h[1]), float(h[2]))
    g = genant.genant_index(heights)
    return CtVertebraTruth(
        level=vertebra.level,
        keypoints=kp,
        heights=heights,
        genant_index=g,
        grade=genant.grade(g),
        deformity=genant.deformity(heights),
        centre=vertebra.centre.copy(),
        axes=vertebra.axes.copy(),
        complete=vertebra.complete,
        fracture=vertebra.fracture,
    )


def centreline_per_slice(column: SpineColumn, grid: CtGrid) -> FloatArray:
    """Where the vertebral-body centre line crosses each slice plane.

    The line runs from the first vertebra's middle top keypoint to the last one's middle
    bottom keypoint along `SpineColumn.curve`, through every body's centre (Pisov et al.'s
    target: the curve through the middle-height end points).

    Parameters
    ----------
    column : SpineColumn
        The anatomy.
    grid : CtGrid
        The slices (tilted planes included).

    Returns
    -------
    numpy.ndarray
        ``(slices, 3)`` LPS points; NaN rows for slices the line does not cross.
    """
    curve = column.curve
    top, bottom = column.curve_span()
    i0 = int(np.argmin(np.linalg.norm(curve - top, axis=1)))
    i1 = int(np.argmin(np.linalg.norm(curve - bottom, axis=1)))
    part = curve[i0 : i1 + 1]
    normal = grid.normal
    # Signed distance of every curve sample to every slice plane; it falls along the curve.
    d = (part @ normal)[None, :] - (grid.positions() @ normal)[:, None]
    out = np.full((grid.slices, 3), np.nan)
    below = d <= 0.0
    crosses = (~below[:, 0]) & below[:, -1]
    j = np.argmax(below, axis=1)
    for k in np.nonzero(crosses)[0]:
        a, b = int(j[k]) - 1, int(j[k])
        t = d[k, a] / (d[k, a] - d[k, b])
        out[k] = part[a] + t * (part[b] - part[a])
    return out


def make_head_phantom(
    rng_or_seed: SeedLike, *, size: CtSize = "small", noise_sigma: float | None = None
) -> CtPhantom:
    """Make a head CT (skull, brain, ventricles; no spine in the field of view).

    Parameters
    ----------
    rng_or_seed : int, numpy.random.Generator or numpy.random.SeedSequence
        Seed.
    size : {"small", "full"} or CtAcquisition
        Matrix and kernel; the field of view is 220–260 mm and slices 2.5–5 mm apart.
    noise_sigma : float, optional
        Noise in HU; drawn in ``[3, 8]`` when omitted.

    Returns
    -------
    CtPhantom
        Body part HEAD, no vertebrae, an all-NaN centre line.
    """
    ss = seed_sequence(rng_or_seed)
    rng = child_rng(ss, _STREAMS["anatomy"])
    acq = random_acquisition(child_rng(ss, _STREAMS["acquisition"]), size)
    fov = rng.uniform(220.0, 260.0)
    pixel = fov / acq.matrix
    spacing = round(float(rng.uniform(2.5, 5.0)), 2)
    a, b, c = rng.uniform(68.0, 78.0), rng.uniform(88.0, 98.0), rng.uniform(80.0, 90.0)
    centre = np.array([rng.uniform(-5, 5), rng.uniform(-15, 5), rng.uniform(-20, 20)])
    top = centre[2] + c + 5.0
    slices = int((c + 45.0) / spacing) + 1
    grid = CtGrid(
        rows=acq.matrix,
        columns=acq.matrix,
        slices=slices,
        pixel_spacing=(pixel, pixel),
        slice_spacing=spacing,
        slice_thickness=spacing,
        origin=(centre[0] - 0.5 * fov, centre[1] - 0.5 * fov, float(top)),
    )
    x, y, z = grid.axes()
    q = np.sqrt(
        ((x - centre[0]) / a) ** 2 + ((y - centre[1]) / b) ** 2 + ((z - centre[2]) / c) ** 2
    )
    depth = (1.0 - q) * a  # mm inside the scalp surface, roughly
    vol = np.full(grid.shape, -1000.0, dtype=np.float32)
    vol[depth > 0] = 30.0  # scalp
    skull = (depth > 5.0) & (depth <= 12.0)
    vol[skull] = 1300.0
    vol[(depth > 7.0) & (depth <= 10.0)] = 650.0  # diploe
    vol[depth > 12.0] = 35.0  # brain
    for side in (-1.0, 1.0):
        v = np.sqrt(
            ((x - centre[0] - side * 12.0) / 8.0) ** 2
            + ((y - centre[1]) / 30.0) ** 2
            + ((z - centre[2] - 10.0) / 15.0) ** 2
        )
        vol[v < 1.0] = 5.0
    vol = ndimage.gaussian_filter(vol, (0.5, 0.7, 0.7))
    noise_rng = child_rng(ss, _STREAMS["noise"])
    sigma = float(noise_rng.uniform(3.0, 8.0)) if noise_sigma is None else noise_sigma
    hu = finish(vol, grid, noise_rng, noise_sigma=sigma, kernel_blur=0.0, blur=False)
    return CtPhantom(
        hu=hu,
        grid=grid,
        body_part="HEAD",
        kernel="SOFT",
        vertebrae=(),
        centreline=np.full((grid.slices, 3), np.nan),
        labels=None,
        column=None,
        torso=None,
        seed=seed_label(ss),
    )


def body_corners(vertebra: PlacedVertebra) -> FloatArray:
    """Corners of the box round a vertebral body (undeformed), in LPS.

    Parameters
    ----------
    vertebra : PlacedVertebra
        The vertebra.

    Returns
    -------
    numpy.ndarray
        ``(8, 3)`` LPS points; a complete vertebra's corners lie inside the volume.
    """
    s = vertebra.shape
    half = np.array([s.half_width, s.half_depth, 0.5 * s.height])
    signs = np.array(np.meshgrid([-1.0, 1.0], [-1.0, 1.0], [-1.0, 1.0], indexing="ij"))
    return vertebra.to_patient(signs.reshape(3, -1).T * half)


# --- plan and geometry ----------------------------------------------------------------------


def _plan_levels(
    rng: np.random.Generator,
    levels: tuple[str, str] | None,
    body_part: Literal["CHEST", "ABDOMEN"] | None,
) -> tuple[Literal["CHEST", "ABDOMEN"], tuple[str, ...]]:
    """Body part and fully visible levels."""
    draw_part: Literal["CHEST", "ABDOMEN"] = "CHEST" if rng.random() < 0.6 else "ABDOMEN"
    chest = (str(rng.choice(CHEST_STARTS)), str(rng.choice(CHEST_ENDS)))
    abdomen = (str(rng.choice(ABDOMEN_STARTS)), str(rng.choice(ABDOMEN_ENDS)))
    if levels is not None:
        names = level_range(*levels)
        if body_part is None:
            above_t9 = REQUESTABLE_LEVELS.index(names[0]) <= REQUESTABLE_LEVELS.index("T9")
            body_part = "CHEST" if above_t9 else "ABDOMEN"
        return body_part, names
    part = body_part or draw_part
    return part, level_range(*(chest if part == "CHEST" else abdomen))


def _fracture_specs(
    rng: np.random.Generator,
    names: Sequence[str],
    fractures: Literal["random"] | Sequence[LevelFracture],
    probability: float = FRACTURE_PROBABILITY,
) -> list[LevelFracture]:
    """Explicit fractures, or the radiograph phantoms' random mix over ``names``."""
    if not isinstance(fractures, str):
        return list(fractures)
    if fractures != "random":
        raise ValueError(
            f"fractures must be 'random' or a sequence of LevelFracture: {fractures!r}"
        )
    count = 0
    if rng.random() < probability:
        counts, weights = zip(*FRACTURE_COUNTS, strict=True)
        count = int(rng.choice(counts, p=weights))
    fractured = [GenantGrade.MILD, GenantGrade.MODERATE, GenantGrade.SEVERE]
    grades = [fractured[int(rng.integers(3))] for _ in range(count)]
    if rng.random() < NEAR_NORMAL_PROBABILITY:
        grades.append(GenantGrade.NORMAL)
    return plan_level_fractures(rng, names, grades)


def _grid(
    acq: CtAcquisition,
    column: SpineColumn,
    torso: Torso,
    margins: FloatArray,
    fov_shift: FloatArray,
    tilt_deg: float,
    centre_on_spine: bool,
) -> CtGrid:
    """Return the grid of an acquisition around a column.

    Slices cover the complete levels and part of each neighbour; the field of view is on the
    body (or the spine), shifted a little, with the spine always inside.
    """
    verts = column.vertebrae
    first, last = verts[1], verts[-2]
    top_kp = body_corners(first)[:, 2].max()
    bottom_kp = body_corners(last)[:, 2].min()
    above, below = verts[0], verts[-1]
    reach_top = float(margins[0]) * (above.shape.height + column.disc_heights[0])
    reach_bottom = float(margins[1]) * (below.shape.height + column.disc_heights[-2])
    z_top = float(top_kp) + reach_top
    z_bottom = float(bottom_kp) - reach_bottom
    slices = math.floor((z_top - z_bottom) / acq.slice_spacing) + 1

    fov = acq.matrix * acq.pixel_spacing
    spine = np.array([v.centre for v in verts])
    sx, sy = float(spine[:, 0].mean()), float(spine[:, 1].mean())
    z_mid = 0.5 * (z_top + z_bottom)
    if centre_on_spine:
        cx, cy = sx, sy + 20.0
    else:
        cx = torso.centre_x + float(fov_shift[0])
        cy = float(torso.body_y(z_mid)) + float(fov_shift[1])
    # Keep the bodies and posterior elements (centre −30 … +75 mm in y, ±45 mm in x) inside.
    half = 0.5 * fov
    cx = float(np.clip(cx, spine[:, 0].max() + 45.0 - half, spine[:, 0].min() - 45.0 + half))
    cy = float(np.clip(cy, spine[:, 1].max() + 75.0 - half, spine[:, 1].min() - 30.0 + half))
    tilt = math.radians(tilt_deg)
    span = (acq.matrix - 1) * acq.pixel_spacing
    return CtGrid(
        rows=acq.matrix,
        columns=acq.matrix,
        slices=slices,
        pixel_spacing=(acq.pixel_spacing, acq.pixel_spacing),
        slice_spacing=acq.slice_spacing,
        slice_thickness=acq.slice_thickness,
        origin=(
            cx - 0.5 * span,
            cy - 0.5 * span * math.cos(tilt),
            z_top - 0.5 * span * math.sin(tilt),
        ),
        tilt_deg=tilt_deg,
    )
