"""The vertebral fracture analysis of an image as the admin study page shows it.

`image_vertebrae` turns a `VertebralAnalysis` into a view model: one row per vertebra (level
or number, heights, Genant index, grade, deformity, score), the worst grade and the count
per grade, the view decision, the spacing and the level rule in words, and the geometry of
an SVG overlay in original image pixels (``viewBox`` = columns × rows): the three height
lines and six keypoints of each vertebra in its grade's colour, and its label.
`current_vertebrae` reads the current job's stored result and returns the view of each
image. Only UIDs and measurements: nothing that identifies the patient.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from spinexr.node.db.models import Result
from spinexr.pipeline.results import ImageResult, StudyResult
from spinexr.pipeline.spacing import SpacingBasis
from spinexr.pipeline.vertebrae.findings import (
    LevelRule,
    VertebraFinding,
    VertebralAnalysis,
    ViewSource,
)
from spinexr.pipeline.vertebrae.genant import GenantGrade

logger = logging.getLogger(__name__)

GRADE_COLOURS: Final[dict[GenantGrade, str]] = {
    GenantGrade.NORMAL: "#00e600",
    GenantGrade.MILD: "#ffd700",
    GenantGrade.MODERATE: "#ff8c00",
    GenantGrade.SEVERE: "#ff2828",
}
"""Overlay colour of each grade (green, yellow, orange, red)."""

NO_VALUE: Final = "—"
"""Shown for a value that does not exist (a height in mm without a spacing)."""

_POINT_RADIUS: Final = 0.004
_FONT_SIZE: Final = 0.022
"""Keypoint radius and label size relative to the image's longest side."""


@dataclass(frozen=True)
class Line:
    """One height line in original pixels."""

    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class VertebraRow:
    """One vertebra: a table row and its overlay.

    Attributes
    ----------
    label : str
        The level (``"L1"``), or ``"#n (level not established)"``.
    overlay_text : str
        The overlay label: ``"L1 G 0.92"``, with grade and deformity when fractured
        (``"#2 G 0.68 moderate wedge"``).
    heights_mm : tuple of str
        Anterior, middle and posterior heights in mm with one decimal, or `NO_VALUE`.
    genant : str
        Genant index, two decimals.
    grade : str
        Genant grade (``normal``, ``mild``, ``moderate``, ``severe``).
    deformity : str
        ``none``, ``wedge``, ``biconcave`` or ``crush``.
    score : str
        Detector confidence, two decimals.
    colour : str
        The grade's overlay colour (`GRADE_COLOURS`).
    lines : tuple of Line
        Anterior, middle and posterior height lines.
    points : tuple of (float, float)
        The six keypoints.
    label_x, label_y : float
        Where the overlay label is anchored.
    label_anchor : str
        SVG ``text-anchor``: ``end`` (label left of the body) or ``start`` (right of it).
    """

    label: str
    overlay_text: str
    heights_mm: tuple[str, str, str]
    genant: str
    grade: str
    deformity: str
    score: str
    colour: str
    lines: tuple[Line, Line, Line]
    points: tuple[tuple[float, float], ...]
    label_x: float
    label_y: float
    label_anchor: str


@dataclass(frozen=True)
class ImageVertebrae:
    """What the study page shows of one image's vertebral fracture analysis.

    Attributes
    ----------
    analysed : bool
        Whether the image was analysed for vertebral fractures.
    reason : str or None
        Why not (or the caveat of an analysed image).
    view : str
        The view decision and where it came from, e.g. ``"lateral (ViewPosition)"``.
    spacing : str
        The spacing used, e.g. ``"PixelSpacing"``.
    levels : str
        The level rule in words.
    worst : str
        The worst grade.
    counts : list of (str, int)
        Number of vertebrae at each grade, normal first.
    rows : list of VertebraRow
        Top to bottom.
    width, height : int or None
        Image columns and rows (the overlay's ``viewBox``); None without them (no overlay).
    point_radius, font_size : float
        Overlay keypoint radius and label size in image pixels.
    model : str
        The keypoint model.
    """

    analysed: bool
    reason: str | None
    view: str
    spacing: str
    levels: str
    worst: str
    counts: list[tuple[str, int]]
    rows: list[VertebraRow]
    width: int | None
    height: int | None
    point_radius: float
    font_size: float
    model: str

    @property
    def overlay(self) -> bool:
        """Whether the page can draw the overlay (analysed, image size known)."""
        return self.analysed and bool(self.rows) and self.width is not None


def view_text(analysis: VertebralAnalysis) -> str:
    """Return the view decision and its source in words.

    Parameters
    ----------
    analysis : VertebralAnalysis
        The analysis.

    Returns
    -------
    str
        E.g. ``"lateral (ViewPosition)"``, ``"lateral (image model 0.97)"``,
        ``"ap (ViewCodeSequence; image model 0.03)"``, ``"unknown"``.
    """
    score = None if analysis.view_score is None else f"image model {analysis.view_score:.2f}"
    source: str | None
    if analysis.view_source is ViewSource.IMAGE_MODEL:
        source = score or "image model"
    elif analysis.view_source is ViewSource.NONE:
        source = score
    else:
        source = analysis.view_source.value + (f"; {score}" if score else "")
    return analysis.view if source is None else f"{analysis.view} ({source})"


def spacing_text(analysis: VertebralAnalysis) -> str:
    """Return the spacing the heights were measured with, in words.

    Parameters
    ----------
    analysis : VertebralAnalysis
        The analysis.

    Returns
    -------
    str
        ``"PixelSpacing (0.150 × 0.150 mm)"``, ``"ImagerPixelSpacing ÷ magnification 1.10
        (0.136 × 0.136 mm)"``, ``"ImagerPixelSpacing (not corrected for magnification)
        (...)"`` or ``"no spacing: ratios and grades only"``.
    """
    if analysis.spacing_basis is SpacingBasis.NONE or analysis.spacing_mm is None:
        return "no spacing: ratios and grades only"
    row, col = analysis.spacing_mm
    text = analysis.spacing_basis.value
    if analysis.magnification_factor is not None:
        text += f" ÷ magnification {analysis.magnification_factor:.2f}"
    elif analysis.spacing_basis is SpacingBasis.IMAGER_PIXEL_SPACING:
        text += " (not corrected for magnification)"
    return f"{text} ({row:.3f} × {col:.3f} mm)"


def level_rule_text(analysis: VertebralAnalysis) -> str:
    """Return how the vertebrae were named, in words.

    Parameters
    ----------
    analysis : VertebralAnalysis
        The analysis.

    Returns
    -------
    str
        ``"levels from the sacrum"`` or ``"numbered from the top: level not established"``.
    """
    if analysis.level_rule is LevelRule.SACRUM:
        return "levels from the sacrum"
    return "numbered from the top: level not established"


def _label_position(
    points: Sequence[tuple[float, float]], width: int | None, font: float
) -> tuple[float, float, str]:
    """Left of the body (anterior on a left-facing view) unless that leaves the image."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    y = (min(ys) + max(ys)) / 2 + font / 3  # baseline: visually centred
    left = min(xs) - font / 2
    if width is None or left >= 3 * font:
        return left, y, "end"
    return max(xs) + font / 2, y, "start"


def _row(v: VertebraFinding, width: int | None, font: float) -> VertebraRow:
    kp = [(round(float(x), 2), round(float(y), 2)) for x, y in v.keypoints]
    lines = tuple(Line(*kp[2 * i], *kp[2 * i + 1]) for i in range(3))
    heights = (
        (NO_VALUE, NO_VALUE, NO_VALUE)
        if v.heights_mm is None
        else tuple(f"{h:.1f}" for h in v.heights_mm)
    )
    x, y, anchor = _label_position(kp, width, font)
    text = f"{v.label} G {v.genant_index:.2f}"
    if v.fractured:
        text += f" {v.grade.value} {v.deformity.value}"
    return VertebraRow(
        label=v.level if v.level is not None else f"#{v.number} (level not established)",
        overlay_text=text,
        heights_mm=(heights[0], heights[1], heights[2]),
        genant=f"{v.genant_index:.2f}",
        grade=v.grade.value,
        deformity=v.deformity.value,
        score=f"{v.score:.2f}",
        colour=GRADE_COLOURS[v.grade],
        lines=(lines[0], lines[1], lines[2]),
        points=tuple(kp),
        label_x=round(x, 1),
        label_y=round(y, 1),
        label_anchor=anchor,
    )


def image_vertebrae(
    analysis: VertebralAnalysis, rows: int | None = None, columns: int | None = None
) -> ImageVertebrae:
    """Return the study page's view of an image's vertebral fracture analysis.

    Parameters
    ----------
    analysis : VertebralAnalysis
        The analysis (analysed or not, with its reason).
    rows, columns : int, optional
        The image size (the overlay's ``viewBox``); without it, no overlay.

    Returns
    -------
    ImageVertebrae
        Rows per vertebra, colours per grade, summary and overlay geometry.
    """
    sized = rows is not None and columns is not None
    longest = max(rows or 0, columns or 0)
    font = round(max(8.0, _FONT_SIZE * longest), 1)
    counts = analysis.grade_counts()
    return ImageVertebrae(
        analysed=analysis.analysed,
        reason=analysis.reason,
        view=view_text(analysis),
        spacing=spacing_text(analysis),
        levels=level_rule_text(analysis),
        worst=analysis.worst_grade.value,
        counts=[(g.value, counts[g]) for g in GenantGrade],
        rows=[_row(v, columns if sized else None, font) for v in analysis.vertebrae],
        width=columns if sized else None,
        height=rows if sized else None,
        point_radius=round(max(1.5, _POINT_RADIUS * longest), 1),
        font_size=font,
        model=analysis.model,
    )


def result_vertebrae(result: StudyResult) -> dict[str, ImageVertebrae]:
    """Return the view of every image of a result that has a vertebral analysis.

    Parameters
    ----------
    result : StudyResult
        The study's result.

    Returns
    -------
    dict of str to ImageVertebrae
        SOP Instance UID → view; images without an analysis (a bundle without a keypoint
        model) are absent.
    """
    return {
        image.sop_instance_uid: _image_view(image)
        for image in result.images
        if image.vertebrae is not None
    }


def _image_view(image: ImageResult) -> ImageVertebrae:
    assert image.vertebrae is not None
    return image_vertebrae(image.vertebrae, image.rows, image.columns)


def current_vertebrae(
    sessions: sessionmaker[Session], job_id: int | None
) -> dict[str, ImageVertebrae]:
    """Return the vertebral view of each image in a job's stored result.

    Parameters
    ----------
    sessions : sessionmaker
        Database sessions.
    job_id : int or None
        The study's current job (None: no job yet).

    Returns
    -------
    dict of str to ImageVertebrae
        SOP Instance UID → view; empty without a result or when the stored payload does
        not match the result schema (logged).
    """
    if job_id is None:
        return {}
    with sessions() as session:
        payload = session.scalar(select(Result.payload).where(Result.job_id == job_id))
    if payload is None:
        return {}
    try:
        result = StudyResult.model_validate(payload)
    except ValidationError:
        logger.warning("job %s: result payload does not match the result schema", job_id)
        return {}
    return result_vertebrae(result)
