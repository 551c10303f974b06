"""The per-vertebra text table that ``spinexr-node analyze`` prints under each study.

For each image with a vertebral fracture analysis, a header line (image, view and its
source, spacing, level rule) and one row per vertebra::

      image 1.2.3.4 lateral (ViewPosition)  spacing PixelSpacing  levels: sacrum
      level  h_a mm  h_m mm  h_p mm     G  grade     type
      L1       27.1    25.9    28.0  0.92  normal    none
      worst: normal (normal 1, mild 0, moderate 0, severe 0)

and for an image not analysed, the reason. Heights without a spacing are ``-`` (ratios and
grades only). Images without an analysis (a bundle without a keypoint model) are skipped.
"""

from __future__ import annotations

from typing import Final

from spinexr.pipeline.results import StudyResult
from spinexr.pipeline.spacing import SpacingBasis
from spinexr.pipeline.vertebrae.findings import (
    LevelRule,
    VertebraFinding,
    VertebralAnalysis,
    ViewSource,
)
from spinexr.pipeline.vertebrae.genant import GenantGrade

INDENT: Final = "  "
HEADER: Final = (
    f"{'level':<5}  {'h_a mm':>6}  {'h_m mm':>6}  {'h_p mm':>6}  {'G':>4}  {'grade':<8}  type"
)
"""Column titles of the per-vertebra rows."""

_MISSING: Final = "-"


def _view(analysis: VertebralAnalysis) -> str:
    if analysis.view_source is ViewSource.IMAGE_MODEL:
        score = "" if analysis.view_score is None else f" {analysis.view_score:.2f}"
        return f"{analysis.view} (image model{score})"
    if analysis.view_source is ViewSource.NONE:
        return analysis.view
    return f"{analysis.view} ({analysis.view_source.value})"


def _spacing(analysis: VertebralAnalysis) -> str:
    if analysis.spacing_basis is SpacingBasis.NONE:
        return "none (ratios and grades only)"
    if analysis.magnification_factor is not None:
        return f"{analysis.spacing_basis.value} / magnification {analysis.magnification_factor:.2f}"
    if analysis.spacing_basis is SpacingBasis.IMAGER_PIXEL_SPACING:
        return f"{analysis.spacing_basis.value} (not corrected for magnification)"
    return analysis.spacing_basis.value


def _levels(analysis: VertebralAnalysis) -> str:
    if analysis.level_rule is LevelRule.SACRUM:
        return "sacrum"
    return "from top (not established)"


def _row(v: VertebraFinding) -> str:
    heights = [_MISSING] * 3 if v.heights_mm is None else [f"{h:.1f}" for h in v.heights_mm]
    return (
        f"{v.label:<5}  {heights[0]:>6}  {heights[1]:>6}  {heights[2]:>6}  "
        f"{v.genant_index:4.2f}  {v.grade.value:<8}  {v.deformity.value}"
    )


def image_table(sop_instance_uid: str, analysis: VertebralAnalysis) -> list[str]:
    """Return the lines for one image's vertebral analysis.

    Parameters
    ----------
    sop_instance_uid : str
        The image.
    analysis : VertebralAnalysis
        Its analysis (analysed or not).

    Returns
    -------
    list of str
        Indented lines without newlines: a header, the column titles, one row per vertebra
        and the worst grade with the count per grade; or one line with the reason the image
        was not analysed.
    """
    if not analysis.analysed:
        return [
            f"{INDENT}image {sop_instance_uid} {_view(analysis)}  "
            f"not analysed for vertebral fractures: {analysis.reason}"
        ]
    counts = analysis.grade_counts()
    tally = ", ".join(f"{g.value} {counts[g]}" for g in GenantGrade)
    lines = [
        f"{INDENT}image {sop_instance_uid} {_view(analysis)}  "
        f"spacing {_spacing(analysis)}  levels: {_levels(analysis)}",
        INDENT + HEADER,
        *(INDENT + _row(v) for v in analysis.vertebrae),
        f"{INDENT}worst: {analysis.worst_grade.value} ({tally})",
    ]
    if analysis.reason:
        lines.append(f"{INDENT}note: {analysis.reason}")
    return lines


def vertebrae_table(result: StudyResult) -> list[str]:
    """Return the vertebral table lines of every image of a study that has an analysis.

    Parameters
    ----------
    result : StudyResult
        The study's result.

    Returns
    -------
    list of str
        `image_table` of each image in input order; empty when no image has an analysis.
    """
    lines: list[str] = []
    for image in result.images:
        if image.vertebrae is not None:
            lines.extend(image_table(image.sop_instance_uid, image.vertebrae))
    lines.extend(ct_table(result))
    return lines


def ct_table(result: StudyResult) -> list[str]:
    """Return the lines of the study's CT analysis (empty without CT).

    Parameters
    ----------
    result : StudyResult
        The study's result.

    Returns
    -------
    list of str
        ``CT series <uid> (<n> slices)`` with the per-vertebra rows (heights in mm measured in
        3D, numbered from the top) and the worst grade, or the reason it was not analysed;
        then one line per other series with why it was not used.
    """
    ct = result.ct
    if ct is None:
        return []
    if ct.analysed:
        lines = image_table(f"CT series {ct.series_instance_uid}", ct.on_reformat())
        lines[0] = (
            f"{INDENT}CT series {ct.series_instance_uid} ({ct.slices} slices)  heights in 3D  "
            f"levels: {_levels(ct.on_reformat())}"
        )
    else:
        lines = [f"{INDENT}CT not analysed for vertebral fractures: {ct.reason}: {ct.message}"]
    for series in ct.series:
        if not series.chosen:
            lines.append(
                f"{INDENT}  series {series.series_instance_uid} not used: "
                + "; ".join(series.reasons or ["-"])
            )
    return lines
