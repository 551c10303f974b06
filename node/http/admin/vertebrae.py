"""The vertebral fracture analysis of an image as the admin study page shows it.

`image_vertebrae` turns a `VertebralAnalysis` into a view model: one row per vertebra (level
or number, heights, Genant index, grade, deformity, score), the worst grade and the count
per grade, the view decision, the spacing and the level rule in words, and the geometry of
an SVG overlay in original image pixels (``viewBox`` = columns × rows): the three height
lines and six keypoints of each vertebra in its grade's colour, and its label, with the
colours, text and place of the GSPS's (`spinexr.node.outputs.vertebrae_gsps`).

The preview PNG is rendered from the image's GSPS when the node built one, and that GSPS
already draws the height lines and labels: the page then offers the overlay switched off
(`ImageVertebrae.in_preview`); without a GSPS (a site profile without them) the overlay is
the only drawing of the keypoints and starts switched on. `study_vertebrae` reads the
current job's stored result and returns the view of each image. Only UIDs and
measurements: nothing that identifies the patient.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from spinexr.node.db.models import Result
from spinexr.node.db.states import OutputKind
from spinexr.node.outputs.vertebrae_gsps import GRADE_COLOURS as GSPS_GRADE_COLOURS
from spinexr.node.outputs.vertebrae_gsps import label_box, vertebra_label
from spinexr.pipeline.ct.findings import REFORMAT_VIEW
from spinexr.pipeline.results import StudyResult
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
    grade: "#{:02x}{:02x}{:02x}".format(*rgb) for grade, rgb in GSPS_GRADE_COLOURS.items()
}
"""Overlay colour of each grade: the GSPS layer's colour (green, yellow, orange, red)."""

NO_VALUE: Final = "—"
"""Shown for a value that does not exist (a height in mm without a spacing)."""

_POINT_RADIUS: Final = 0.004
"""Keypoint radius relative to the image's longest side."""
_TEXT_FILL: Final = 0.8
"""Font size relative to the height of the label's box (as the preview renders GSPS text)."""


@dataclass(frozen=True)
class Line:
    """One height line in original pixels."""

    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class Label:
    """Where an overlay label goes: the GSPS's label box, in original pixels."""

    x: float
    y: float
    width: float
    font_size: float


@dataclass(frozen=True)
class VertebraRow:
    """One vertebra: a table row and its overlay.

    Attributes
    ----------
    label : str
        The level (``"L1"``), or ``"#n (level not established)"``.
    overlay_text : str
        The label drawn beside the body, the GSPS's (``"L1 G 0.68 moderate wedge"``).
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
    place : Label or None
        Left end, vertical centre, width and font size of the overlay label (None without
        the image size).
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
    place: Label | None


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
        The spacing used, e.g. ``"PixelSpacing (0.150 × 0.150 mm)"``.
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
    point_radius : float
        Overlay keypoint radius in image pixels.
    model : str
        The keypoint model.
    in_preview : bool
        The preview is rendered from a GSPS of the image, which draws the same lines and
        labels: the overlay starts switched off.
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
    model: str
    in_preview: bool = False

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
    if analysis.view == REFORMAT_VIEW:
        return "straightened mid-sagittal CT reformat"
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


def _place(v: VertebraFinding, rows: int, columns: int) -> Label:
    left, top, right, bottom = label_box(v, rows, columns)
    return Label(
        x=round(left, 1),
        y=round((top + bottom) / 2, 1),
        width=round(right - left, 1),
        font_size=round(_TEXT_FILL * (bottom - top), 1),
    )


def _row(v: VertebraFinding, rows: int | None, columns: int | None) -> VertebraRow:
    kp = [(round(float(x), 2), round(float(y), 2)) for x, y in v.keypoints]
    lines = [Line(*kp[2 * i], *kp[2 * i + 1]) for i in range(3)]
    mm = v.heights_mm
    heights = (NO_VALUE,) * 3 if mm is None else (f"{mm[0]:.1f}", f"{mm[1]:.1f}", f"{mm[2]:.1f}")
    return VertebraRow(
        label=v.level if v.level is not None else f"#{v.number} (level not established)",
        overlay_text=vertebra_label(v),
        heights_mm=heights,
        genant=f"{v.genant_index:.2f}",
        grade=v.grade.value,
        deformity=v.deformity.value,
        score=f"{v.score:.2f}",
        colour=GRADE_COLOURS[v.grade],
        lines=(lines[0], lines[1], lines[2]),
        points=tuple(kp),
        place=None if rows is None or columns is None else _place(v, rows, columns),
    )


def image_vertebrae(
    analysis: VertebralAnalysis,
    rows: int | None = None,
    columns: int | None = None,
    *,
    in_preview: bool = False,
) -> ImageVertebrae:
    """Return the study page's view of an image's vertebral fracture analysis.

    Parameters
    ----------
    analysis : VertebralAnalysis
        The analysis (analysed or not, with its reason).
    rows, columns : int, optional
        The image size (the overlay's ``viewBox``); without it, no overlay.
    in_preview : bool
        The preview is rendered from a GSPS of the image (the overlay starts switched off).

    Returns
    -------
    ImageVertebrae
        Rows per vertebra, colours per grade, summary and overlay geometry.
    """
    sized = rows is not None and columns is not None
    counts = analysis.grade_counts()
    return ImageVertebrae(
        analysed=analysis.analysed,
        reason=analysis.reason,
        view=view_text(analysis),
        spacing=spacing_text(analysis),
        levels=level_rule_text(analysis),
        worst=analysis.worst_grade.value,
        counts=[(g.value, counts[g]) for g in GenantGrade],
        rows=[_row(v, rows, columns) for v in analysis.vertebrae],
        width=columns if sized else None,
        height=rows if sized else None,
        point_radius=round(max(1.5, _POINT_RADIUS * max(rows or 0, columns or 0)), 1),
        model=analysis.model,
        in_preview=in_preview,
    )


def result_vertebrae(
    result: StudyResult, in_preview: Collection[str] = ()
) -> dict[str, ImageVertebrae]:
    """Return the view of every image of a result that has a vertebral analysis.

    Parameters
    ----------
    result : StudyResult
        The study's result.
    in_preview : collection of str
        SOP Instance UIDs whose preview is rendered from a GSPS.

    Returns
    -------
    dict of str to ImageVertebrae
        SOP Instance UID → view; images without an analysis (a bundle without a keypoint
        model) are absent.
    """
    return {
        image.sop_instance_uid: image_vertebrae(
            image.vertebrae,
            image.rows,
            image.columns,
            in_preview=image.sop_instance_uid in in_preview,
        )
        for image in result.images
        if image.vertebrae is not None
    }


def gsps_sources(jobs: Sequence[Mapping[str, Any]]) -> set[str]:
    """Return the images that have a GSPS the node built (their preview is rendered from it).

    Parameters
    ----------
    jobs : sequence of dict
        The study's jobs as `spinexr.node.admin.studies.study_detail` lists them, each with
        ``outputs`` (``kind``, ``source_sop_instance_uid``).

    Returns
    -------
    set of str
        SOP Instance UIDs of the source images.
    """
    return {
        str(o["source_sop_instance_uid"])
        for job in jobs
        for o in job.get("outputs", ())
        if o.get("kind") == OutputKind.GSPS.value and o.get("source_sop_instance_uid")
    }


def study_vertebrae(
    sessions: sessionmaker[Session], detail: Mapping[str, Any]
) -> dict[str, ImageVertebrae]:
    """Return the vertebral view of each image in the study's current result.

    Parameters
    ----------
    sessions : sessionmaker
        Database sessions.
    detail : dict
        The study as `spinexr.node.admin.studies.study_detail` returns it
        (``current_job_id``, ``jobs``).

    Returns
    -------
    dict of str to ImageVertebrae
        SOP Instance UID → view; empty without a result or when the stored payload does
        not match the result schema (logged).
    """
    result = current_result(sessions, detail)
    if result is None:
        return {}
    return result_vertebrae(result, gsps_sources(detail.get("jobs", ())))


def current_result(
    sessions: sessionmaker[Session], detail: Mapping[str, Any]
) -> StudyResult | None:
    """Return the study's current stored result.

    Parameters
    ----------
    sessions : sessionmaker
        Database sessions.
    detail : dict
        The study as `spinexr.node.admin.studies.study_detail` returns it.

    Returns
    -------
    StudyResult or None
        None without a result or when the stored payload does not match the result schema
        (logged).
    """
    job_id = detail.get("current_job_id")
    if job_id is None:
        return None
    with sessions() as session:
        payload = session.scalar(select(Result.payload).where(Result.job_id == job_id))
    if payload is None:
        return None
    try:
        return StudyResult.model_validate(payload)
    except ValidationError:
        logger.warning("job %s: result payload does not match the result schema", job_id)
        return None


@dataclass(frozen=True)
class CtView:
    """The study page's CT section.

    Attributes
    ----------
    vertebrae : ImageVertebrae
        The vertebrae as found on the straightened reformat (heights in mm measured in 3D),
        or the reason the CT was not analysed.
    series : list of tuple
        ``(series UID, instances, "analysed" or the reasons it was not)`` per CT series.
    """

    vertebrae: ImageVertebrae
    series: list[tuple[str, int, str]]


def study_ct(sessions: sessionmaker[Session], detail: Mapping[str, Any]) -> CtView | None:
    """Return the CT section of the study page (None when the study's result has no CT).

    Parameters
    ----------
    sessions : sessionmaker
        Database sessions.
    detail : dict
        The study as `spinexr.node.admin.studies.study_detail` returns it.

    Returns
    -------
    CtView or None
        The vertebrae table and the verdict on every CT series.
    """
    result = current_result(sessions, detail)
    if result is None or result.ct is None:
        return None
    ct = result.ct
    return CtView(
        vertebrae=image_vertebrae(ct.on_reformat()),
        series=[
            (
                s.series_instance_uid,
                s.instances,
                "analysed" if s.chosen and ct.analysed else "; ".join(s.reasons) or "-",
            )
            for s in ct.series
        ],
    )
