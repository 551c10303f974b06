"""Vertebral fractures on a CT volume: Pisov et al.'s whole method (``method.md`` §8).

`analyse_ct_volume` runs the three steps on one volume:

1. **localisation** (`spinexr.pipeline.ct.localise`): the vertebral-body centre on every
   resampled axial slice, with the probability that the slice shows spine; slices below
   `MIN_SPINE_CONFIDENCE` are dropped, and fewer than `MIN_SPINE_SLICES` left means no spine
   (`CtRefusal.NO_SPINE`);
2. **straightening** (`spinexr.pipeline.ct.reformat`): the smoothed centre line, the
   mid-sagittal reformat along it, windowed for bone;
3. **keypoints** on the reformat with the CT-trained six-keypoint detector (any
   `KeypointModel`), each keypoint mapped back to patient coordinates (LPS mm); the three
   heights are measured **in 3D** between the mapped points (`StraightMap.distance_mm`, free
   of the straightening's distortion), then the Genant index, grade and deformity follow
   exactly as on radiographs (`spinexr.pipeline.vertebrae.genant`). A vertebra cut by the
   first or last slice (a keypoint within `EDGE_MARGIN_MM` of the field of view's end) is
   left out (`within_volume`): the reformat's fill would make up its heights.

Levels are not named here (the field of view of a chest or abdomen CT rarely fixes the
count); vertebrae are numbered from the top.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Final

import numpy as np
import numpy.typing as npt
import torch

from spinexr.pipeline.ct.errors import CtRefusal, UnsupportedSeriesError
from spinexr.pipeline.ct.localise import LocaliserNet, localise
from spinexr.pipeline.ct.reformat import (
    centreline_of,
    reformat_display,
    sagittal_reformat,
    xy_to_rc,
)
from spinexr.pipeline.vertebrae import genant
from spinexr.pipeline.vertebrae.genant import DEFAULT_CUTOFFS, Deformity, GenantCutoffs, GenantGrade
from spinexr.pipeline.vertebrae.objects import KeypointModel, ObjectKind
from spinexr.pipeline.vertebrae.straighten import Straightened

FloatArray = npt.NDArray[np.float64]

MIN_SPINE_CONFIDENCE: Final = 0.5
"""Slices whose spine probability is below this are not used for the centre line."""

MIN_SPINE_SLICES: Final = 5
"""Fewest slices with spine for a centre line (`fit_centreline` needs five points)."""

EDGE_MARGIN_MM: Final = 3.0
"""A vertebra's keypoints must lie this far inside the first and last scanned slices."""

HEIGHT_PAIRS: Final = ((0, 1), (2, 3), (4, 5))
"""Keypoint indices (top, bottom) of the anterior, middle and posterior heights."""


@dataclass(frozen=True)
class CtVertebra:
    """One vertebral body found on the reformat.

    Attributes
    ----------
    number : int
        Position from the top (1-based).
    keypoints_xy : numpy.ndarray
        ``(6, 2)`` ``(x, y)`` on the reformat, origin at the top-left corner of the top-left
        pixel, `genant.KEYPOINT_NAMES` order.
    keypoints_lps : numpy.ndarray
        ``(6, 3)`` the same points in the patient (LPS mm).
    heights_mm : tuple of float
        ``(h_a, h_m, h_p)`` measured in 3D.
    genant_index : float
        ``min / max`` of the heights.
    grade : GenantGrade
        From the index.
    deformity : Deformity
        From the heights.
    score : float
        Detection score.
    """

    number: int
    keypoints_xy: FloatArray
    keypoints_lps: FloatArray
    heights_mm: tuple[float, float, float]
    genant_index: float
    grade: GenantGrade
    deformity: Deformity
    score: float

    @property
    def centre_lps(self) -> FloatArray:
        """The body's centre: the mean of its six keypoints (LPS mm)."""
        return np.asarray(self.keypoints_lps.mean(axis=0), dtype=np.float64)


@dataclass(frozen=True)
class CtVertebralAnalysis:
    """What the CT method found on one volume.

    Attributes
    ----------
    reformat : Straightened
        The straightened mid-sagittal image (HU) and its mapping.
    display : numpy.ndarray
        ``uint8`` the windowed reformat the detector read.
    vertebrae : tuple of CtVertebra
        Top to bottom.
    centre_points : numpy.ndarray
        ``(N, 3)`` the localiser's centre points kept for the centre line.
    seconds : dict of str to float
        Time per step: ``localisation``, ``straightening``, ``detection``.
    """

    reformat: Straightened
    display: npt.NDArray[np.uint8]
    vertebrae: tuple[CtVertebra, ...]
    centre_points: FloatArray
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def lowest_genant(self) -> float | None:
        """The lowest Genant index (None without vertebrae)."""
        return min((v.genant_index for v in self.vertebrae), default=None)

    @property
    def worst_grade(self) -> GenantGrade:
        """The worst grade (normal without vertebrae)."""
        return genant.worst([v.grade for v in self.vertebrae])


def analyse_ct_volume(
    volume_hu: npt.NDArray[np.generic],
    affine: npt.ArrayLike,
    localiser: LocaliserNet,
    keypoints: KeypointModel,
    *,
    cutoffs: GenantCutoffs = DEFAULT_CUTOFFS,
    series_instance_uid: str | None = None,
    centre_points: npt.ArrayLike | None = None,
    score_threshold: float = 0.0,
    device: torch.device | str = "cpu",
) -> CtVertebralAnalysis:
    """Find, straighten and grade the vertebrae of a CT volume.

    Parameters
    ----------
    volume_hu : numpy.ndarray
        ``(slices, rows, columns)`` Hounsfield units.
    affine : array-like
        Index → LPS mm.
    localiser : LocaliserNet
        The centre-line network.
    keypoints : KeypointModel
        The keypoint detector trained on CT reformats.
    cutoffs : GenantCutoffs
        Grade bounds.
    series_instance_uid : str, optional
        For the refusal's message.
    centre_points : array-like, optional
        ``(N, 3)`` LPS centre points to use instead of the localiser's (e.g. the ground
        truth's, to measure what automatic localisation costs); ``localiser`` is then not
        run.
    score_threshold : float
        Vertebrae the detector scores below this are left out (0 keeps every detection, as
        the evaluation does to sweep its operating point).

    Returns
    -------
    CtVertebralAnalysis
        The reformat and the vertebrae, top to bottom.

    Raises
    ------
    UnsupportedSeriesError
        ``NO_SPINE`` when fewer than `MIN_SPINE_SLICES` slices show spine.
    """
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    if centre_points is None:
        points, confidence = localise(volume_hu, affine, localiser, device=device)
        kept = points[(confidence >= MIN_SPINE_CONFIDENCE) & np.isfinite(points).all(axis=1)]
    else:
        given = np.asarray(centre_points, dtype=np.float64).reshape(-1, 3)
        kept = given[np.isfinite(given).all(axis=1)]
    seconds["localisation"] = time.perf_counter() - started
    if len(kept) < MIN_SPINE_SLICES:
        raise UnsupportedSeriesError(
            CtRefusal.NO_SPINE,
            f"no vertebral column found: {len(kept)} slice(s) with spine probability "
            f">= {MIN_SPINE_CONFIDENCE}, {MIN_SPINE_SLICES} needed",
            series_instance_uid,
        )
    started = time.perf_counter()
    reformat = sagittal_reformat(volume_hu, affine, centreline_of(kept))
    display = reformat_display(reformat.image)
    seconds["straightening"] = time.perf_counter() - started
    started = time.perf_counter()
    spacing = reformat.spacing_mm
    found = [
        o
        for o in keypoints.predict(display, spacing)
        if o.kind is ObjectKind.VERTEBRA and o.score >= score_threshold
    ]
    found.sort(key=lambda o: float(o.keypoints[:, 1].mean()))
    measured = [_vertebra(0, obj.keypoints, obj.score, reformat, cutoffs) for obj in found]
    inside = [v for v in measured if within_volume(v.keypoints_lps, volume_hu.shape, affine)]
    vertebrae = tuple(replace(v, number=number) for number, v in enumerate(inside, start=1))
    seconds["detection"] = time.perf_counter() - started
    return CtVertebralAnalysis(
        reformat=reformat,
        display=display,
        vertebrae=vertebrae,
        centre_points=kept,
        seconds=seconds,
    )


def within_volume(
    points_lps: npt.ArrayLike,
    shape: tuple[int, ...],
    affine: npt.ArrayLike,
    margin_mm: float = EDGE_MARGIN_MM,
) -> bool:
    """Return whether points lie inside the scanned slices, ``margin_mm`` from either end.

    A vertebra cut by (or ending at) the first or last slice of the field of view is not
    measured: its keypoints would sit on the cut, and its heights would be made up by the
    reformat's fill beyond the volume.

    Parameters
    ----------
    points_lps : array-like
        ``(N, 3)`` LPS mm.
    shape : tuple of int
        The volume's shape ``(slices, rows, columns)``.
    affine : array-like
        Index → LPS mm.
    margin_mm : float
        Distance the points must keep from the outer slices' edges (half a slice beyond
        their centres).

    Returns
    -------
    bool
        True when every point is at least ``margin_mm`` inside.
    """
    a = np.asarray(affine, dtype=np.float64)
    pts = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
    k = (np.c_[pts, np.ones(len(pts))] @ np.linalg.inv(a).T)[:, 0]
    margin = margin_mm / float(np.linalg.norm(a[:3, 0]))  # in slices
    return bool(((k >= -0.5 + margin) & (k <= shape[0] - 0.5 - margin)).all())


def measure_vertebra(
    keypoints_xy: npt.ArrayLike, reformat: Straightened
) -> tuple[FloatArray, tuple[float, float, float]]:
    """Map a vertebra's reformat keypoints to the patient and measure its heights in 3D.

    Parameters
    ----------
    keypoints_xy : array-like
        ``(6, 2)`` ``(x, y)``, origin at the top-left corner of the top-left pixel.
    reformat : Straightened
        The reformat they were found on.

    Returns
    -------
    keypoints_lps : numpy.ndarray
        ``(6, 3)`` LPS mm.
    heights_mm : tuple of float
        ``(h_a, h_m, h_p)``.
    """
    rc = xy_to_rc(keypoints_xy)
    lps = reformat.to_patient(rc)
    tops, bottoms = [t for t, _ in HEIGHT_PAIRS], [b for _, b in HEIGHT_PAIRS]
    h = reformat.map.distance_mm(rc[tops], rc[bottoms])
    return lps, (float(h[0]), float(h[1]), float(h[2]))


def _vertebra(
    number: int,
    keypoints_xy: npt.ArrayLike,
    score: float,
    reformat: Straightened,
    cutoffs: GenantCutoffs,
) -> CtVertebra:
    xy = np.asarray(keypoints_xy, dtype=np.float64).reshape(6, 2)
    lps, heights = measure_vertebra(xy, reformat)
    index = genant.genant_index(heights)
    return CtVertebra(
        number=number,
        keypoints_xy=xy,
        keypoints_lps=lps,
        heights_mm=heights,
        genant_index=index,
        grade=genant.grade(index, cutoffs),
        deformity=genant.deformity(heights, cutoffs),
        score=float(score),
    )
