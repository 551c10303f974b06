"""Heights, Genant index, grade and deformity type of a vertebra from its six keypoints.

Keypoint order (``method.md`` §8, the order of Pisov et al.'s released annotations):
``(anterior top, anterior bottom, middle top, middle bottom, posterior top, posterior bottom)``,
each an ``(x, y)`` pair in image pixels (x = column, y = row).

Grades (Genant's semi-quantitative method, cut-offs are settings): normal ``G > 0.80``,
mild ``0.75 < G ≤ 0.80``, moderate ``0.60 < G ≤ 0.75``, severe ``G ≤ 0.60``, with
``G = min(h_a, h_m, h_p) / max(h_a, h_m, h_p)``. Deformity type from the shortest height:
wedge (anterior), biconcave (middle), crush (posterior, or all three reduced alike).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

KEYPOINT_NAMES: tuple[str, ...] = (
    "anterior_top",
    "anterior_bottom",
    "middle_top",
    "middle_bottom",
    "posterior_top",
    "posterior_bottom",
)
"""The six keypoints, in order."""

HEIGHT_NAMES: tuple[str, str, str] = ("anterior", "middle", "posterior")
"""The three heights, in order; height ``i`` joins keypoints ``2i`` and ``2i + 1``."""

FLIP_HORIZONTAL: tuple[int, ...] = (4, 5, 2, 3, 0, 1)
"""Keypoint permutation under a left-right flip (anterior ↔ posterior)."""

FLIP_VERTICAL: tuple[int, ...] = (1, 0, 3, 2, 5, 4)
"""Keypoint permutation under an up-down flip (top ↔ bottom)."""


class GenantGrade(enum.StrEnum):
    """Genant's semi-quantitative grade of a vertebral body."""

    NORMAL = "normal"
    MILD = "mild"
    MODERATE = "moderate"
    SEVERE = "severe"

    @property
    def number(self) -> int:
        """Genant grade number: 0 normal, 1 mild, 2 moderate, 3 severe."""
        return _GRADE_ORDER.index(self)


_GRADE_ORDER = (GenantGrade.NORMAL, GenantGrade.MILD, GenantGrade.MODERATE, GenantGrade.SEVERE)


class Deformity(enum.StrEnum):
    """Type of vertebral deformity, from which height is shortest."""

    NONE = "none"
    WEDGE = "wedge"
    BICONCAVE = "biconcave"
    CRUSH = "crush"


@dataclass(frozen=True)
class GenantCutoffs:
    """Upper bounds of G for each fracture grade (``G ≤ bound`` is that grade or worse).

    Attributes
    ----------
    mild, moderate, severe : float
        Defaults 0.80, 0.75, 0.60 (Genant 1993).
    """

    mild: float = 0.80
    moderate: float = 0.75
    severe: float = 0.60

    def __post_init__(self) -> None:
        if not 0.0 < self.severe < self.moderate < self.mild < 1.0:
            raise ValueError(
                "Genant cut-offs must satisfy 0 < severe < moderate < mild < 1, got "
                f"{self.severe}, {self.moderate}, {self.mild}"
            )


DEFAULT_CUTOFFS = GenantCutoffs()

PAPER_AT_LEAST_MILD = 0.80
"""Pisov et al.'s table cut-off for "at least mild": ``G ≤ 0.80``."""

PAPER_AT_LEAST_MODERATE = 0.74
"""Pisov et al.'s table cut-off for "at least moderate": ``G ≤ 0.74``."""


def as_keypoints(points: Sequence[Sequence[float]] | npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Return the keypoints as a ``(6, 2)`` float array, checking shape and finiteness.

    Parameters
    ----------
    points : array-like
        Six ``(x, y)`` pairs.

    Returns
    -------
    numpy.ndarray
        ``float64`` array of shape ``(6, 2)``.

    Raises
    ------
    ValueError
        For another shape or a non-finite value.
    """
    arr = np.asarray(points, dtype=np.float64)
    if arr.shape != (6, 2):
        raise ValueError(f"expected six (x, y) keypoints, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("keypoints must be finite")
    return arr


def heights(
    points: Sequence[Sequence[float]] | npt.ArrayLike,
    spacing: tuple[float, float] | None = None,
) -> tuple[float, float, float]:
    """Anterior, middle and posterior heights.

    Parameters
    ----------
    points : array-like
        Six ``(x, y)`` keypoints in pixels (see the module docstring for the order).
    spacing : tuple of float, optional
        ``(row_mm, column_mm)``: heights in mm; None gives heights in pixels.

    Returns
    -------
    tuple of float
        ``(h_a, h_m, h_p)``.
    """
    kp = as_keypoints(points)
    row_mm, col_mm = spacing if spacing is not None else (1.0, 1.0)
    out = []
    for i in range(3):
        dx = (kp[2 * i + 1, 0] - kp[2 * i, 0]) * col_mm
        dy = (kp[2 * i + 1, 1] - kp[2 * i, 1]) * row_mm
        out.append(math.hypot(dx, dy))
    return out[0], out[1], out[2]


def genant_index(h: Sequence[float]) -> float:
    """Genant's index ``min(h) / max(h)`` of three heights (0 when all are 0).

    Parameters
    ----------
    h : sequence of float
        ``(h_a, h_m, h_p)`` in any one unit.

    Returns
    -------
    float
        The ratio in ``[0, 1]``.
    """
    top = max(h)
    return 0.0 if top <= 0.0 else float(min(h) / top)


def grade(g: float, cutoffs: GenantCutoffs = DEFAULT_CUTOFFS) -> GenantGrade:
    """Genant grade of an index.

    Parameters
    ----------
    g : float
        Genant index.
    cutoffs : GenantCutoffs
        Grade bounds.

    Returns
    -------
    GenantGrade
        The grade.
    """
    if g <= cutoffs.severe:
        return GenantGrade.SEVERE
    if g <= cutoffs.moderate:
        return GenantGrade.MODERATE
    if g <= cutoffs.mild:
        return GenantGrade.MILD
    return GenantGrade.NORMAL


def deformity(h: Sequence[float], cutoffs: GenantCutoffs = DEFAULT_CUTOFFS) -> Deformity:
    """Deformity type: which height is shortest (none for a normal body).

    Parameters
    ----------
    h : sequence of float
        ``(h_a, h_m, h_p)``.
    cutoffs : GenantCutoffs
        Grade bounds.

    Returns
    -------
    Deformity
        ``none`` when the grade is normal; otherwise wedge (anterior shortest), biconcave
        (middle shortest) or crush (posterior shortest).
    """
    if grade(genant_index(h), cutoffs) is GenantGrade.NORMAL:
        return Deformity.NONE
    shortest = int(np.argmin(h))
    return (Deformity.WEDGE, Deformity.BICONCAVE, Deformity.CRUSH)[shortest]


def worst(grades: Sequence[GenantGrade]) -> GenantGrade:
    """Return the worst of several grades (normal for none).

    Parameters
    ----------
    grades : sequence of GenantGrade
        Grades.

    Returns
    -------
    GenantGrade
        The highest-numbered grade.
    """
    return max(grades, key=lambda g: g.number, default=GenantGrade.NORMAL)
