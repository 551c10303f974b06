"""Hand-made vertebral analyses for the output builder tests (no model needed).

Importable as ``vertebrae_outputs_support`` (``tests/`` is on pytest's path). Vertebrae are
stacked down a lateral phantom image, patient facing left (anterior = smaller x); heights,
Genant index, grade and deformity come from `spinexr.pipeline.vertebrae.genant`.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

from spinexr.pipeline.results import ImageResult, StudyResult
from spinexr.pipeline.spacing import SpacingBasis, read_pixel_spacing
from spinexr.pipeline.vertebrae import genant
from spinexr.pipeline.vertebrae.findings import (
    LevelRule,
    VertebraFinding,
    VertebralAnalysis,
    VertebralStatus,
    ViewSource,
)

Heights = tuple[float, float, float]

GRADED_HEIGHTS: tuple[Heights, ...] = (
    (40.0, 40.0, 40.0),  # normal, deformity none
    (31.0, 38.0, 40.0),  # G 0.775 mild wedge
    (40.0, 27.6, 40.0),  # G 0.69 moderate biconcave
    (40.0, 36.0, 20.0),  # G 0.50 severe crush
    (27.0, 39.0, 40.0),  # G 0.675 moderate wedge
)
"""Pixel heights (anterior, middle, posterior) of five vertebrae covering every grade."""

TOP_Y = 60.0
STEP_Y = 56.0
ANTERIOR_X = 150.0
DEPTH_X = 60.0
MODEL = "pisov-keypoints 0.3.1"


def keypoints(index: int, heights: Heights) -> list[tuple[float, float]]:
    """Six keypoints of the ``index``-th vertebra from the top, heights centred on one line.

    Fractional coordinates, so that the SR's float32 SCOORDs are exercised.
    """
    centre = TOP_Y + index * STEP_Y + 20.25
    xs = (ANTERIOR_X + 0.5, ANTERIOR_X + DEPTH_X / 2, ANTERIOR_X + DEPTH_X - 0.25)
    out: list[tuple[float, float]] = []
    for x, h in zip(xs, heights, strict=True):
        out += [(x, centre - h / 2), (x + 0.125, centre + h / 2)]
    return out


def vertebra(
    number: int,
    heights_px: Heights,
    spacing: tuple[float, float] | None,
    level: str | None,
) -> VertebraFinding:
    """A vertebra whose measurements follow its keypoints."""
    points = keypoints(number - 1, heights_px)
    px = genant.heights(points)
    mm = None if spacing is None else genant.heights(points, spacing)
    g = genant.genant_index(px)
    return VertebraFinding(
        number=number,
        level=level,
        score=0.9 - 0.01 * number,
        keypoints=points,
        heights_px=px,
        heights_mm=mm,
        genant_index=g,
        grade=genant.grade(g),
        deformity=genant.deformity(px),
    )


def lateral_analysis(
    ds: Dataset,
    heights: Sequence[Heights] = GRADED_HEIGHTS,
    *,
    levels: bool = True,
    spacing: bool = True,
    magnification: float | None = None,
) -> VertebralAnalysis:
    """An analysed lateral image; with ``levels`` the lowest vertebra is L5 (sacrum rule)."""
    read = read_pixel_spacing(ds)
    pair = (read.row_mm, read.column_mm)
    basis = read.basis
    if not spacing or pair[0] is None or pair[1] is None:
        spacing_mm, basis = None, SpacingBasis.NONE
    elif magnification is not None:
        basis = SpacingBasis.IMAGER_PIXEL_SPACING
        spacing_mm = (pair[0] / magnification, pair[1] / magnification)
    else:
        spacing_mm = (pair[0], pair[1])
    count = len(heights)
    names = [f"L{5 - count + i}" for i in range(1, count + 1)] if levels else [None] * count
    return VertebralAnalysis(
        status=VertebralStatus.ANALYSED,
        view="lateral",
        view_source=ViewSource.VIEW_POSITION,
        spacing_basis=basis,
        spacing_mm=spacing_mm,
        magnification_factor=magnification if spacing_mm is not None else None,
        level_rule=LevelRule.SACRUM if levels else LevelRule.FROM_TOP,
        vertebrae=[
            vertebra(i, h, spacing_mm, name)
            for i, (h, name) in enumerate(zip(heights, names, strict=True), start=1)
        ],
        model=MODEL,
    )


def not_analysed(status: VertebralStatus, reason: str) -> VertebralAnalysis:
    """An image not analysed for vertebral fractures."""
    view = "ap" if status is VertebralStatus.NOT_LATERAL else "unknown"
    return VertebralAnalysis(
        status=status,
        reason=reason,
        view=view,
        view_source=ViewSource.VIEW_POSITION if view == "ap" else ViewSource.NONE,
        model="" if status is VertebralStatus.NO_MODEL else MODEL,
    )


AP_NOT_LATERAL = not_analysed(VertebralStatus.NOT_LATERAL, "AP view (ViewPosition AP)")


def with_vertebrae(
    result: StudyResult, analyses: Sequence[VertebralAnalysis | None]
) -> StudyResult:
    """The result with each image's vertebral analysis replaced (in image order)."""
    images: list[ImageResult] = [
        image.model_copy(update={"vertebrae": analysis})
        for image, analysis in zip(result.images, analyses, strict=True)
    ]
    return result.model_copy(update={"images": images})
