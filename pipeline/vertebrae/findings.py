"""Typed, JSON-serialisable result of the vertebral fracture analysis of one image.

`VertebralAnalysis` hangs off `spinexr.pipeline.results.ImageResult.vertebrae`; the SR,
GSPS, admin page and ``analyze`` read it. Every image the lesion analysis saw gets one, with
a `VertebralStatus` that says whether it was analysed and, if not, why (an AP view is "not
analysed for vertebral fractures", never given a fabricated grade).
"""

from __future__ import annotations

import enum
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spinexr.pipeline.spacing import SpacingBasis
from spinexr.pipeline.vertebrae.genant import Deformity, GenantGrade, worst

Score = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Point = tuple[
    Annotated[float, Field(allow_inf_nan=False)], Annotated[float, Field(allow_inf_nan=False)]
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class VertebralStatus(enum.StrEnum):
    """Whether an image was analysed for vertebral fractures, and if not, why."""

    ANALYSED = "analysed"
    NOT_LATERAL = "not_lateral"
    NO_VERTEBRAE = "no_vertebrae"
    TOO_SMALL = "too_small"
    NO_MODEL = "no_model"
    FAILED = "failed"


class ViewSource(enum.StrEnum):
    """Where the AP/lateral decision came from."""

    VIEW_POSITION = "ViewPosition"
    VIEW_CODE = "ViewCodeSequence"
    IMAGE_MODEL = "image_model"
    NONE = "none"


class LevelRule(enum.StrEnum):
    """How vertebrae were named.

    ``sacrum``: the first sacral segment is in view directly below the lowest vertebra, which
    is therefore L5; the others are counted upward (five lumbar vertebrae assumed).
    ``from_top``: no anchor fixes the count; vertebrae are numbered from the top and their
    level is not established.
    """

    SACRUM = "sacrum"
    FROM_TOP = "from_top"


class VertebraFinding(_Model):
    """One vertebral body: six keypoints, heights, Genant index and grade.

    Attributes
    ----------
    number : int
        1 for the top vertebra in the image, counting down.
    level : str or None
        ``"L1"`` etc. when the level is established (`LevelRule.SACRUM`), else None.
    score : float
        Detector confidence.
    keypoints : list of (float, float)
        Six ``(x, y)`` points in original pixels, in `genant.KEYPOINT_NAMES` order.
    heights_px : tuple of float
        ``(h_a, h_m, h_p)`` in pixels.
    heights_mm : tuple of float or None
        The same in mm (None without a spacing).
    genant_index : float
        ``min(h) / max(h)``.
    grade : GenantGrade
        Genant grade.
    deformity : Deformity
        Type of deformity (``none`` for a normal body).
    """

    number: int = Field(ge=1)
    level: str | None = None
    score: Score
    keypoints: list[Point] = Field(min_length=6, max_length=6)
    heights_px: tuple[float, float, float]
    heights_mm: tuple[float, float, float] | None = None
    genant_index: Score
    grade: GenantGrade
    deformity: Deformity

    @property
    def label(self) -> str:
        """The level name, or ``"#n"`` (numbered from the top) when it is not established."""
        return self.level if self.level is not None else f"#{self.number}"

    @property
    def fractured(self) -> bool:
        """Whether the grade is mild or worse."""
        return self.grade is not GenantGrade.NORMAL


class VertebralAnalysis(_Model):
    """The vertebral fracture analysis of one image.

    Attributes
    ----------
    status : VertebralStatus
        Analysed, or why not.
    reason : str or None
        Human-readable explanation when not analysed (or when analysed with a caveat).
    view : {"lateral", "ap", "unknown"}
        The projection decided for the image.
    view_source : ViewSource
        Where that decision came from.
    view_score : float or None
        The image model's lateral probability when it decided (or was consulted).
    spacing_basis : SpacingBasis
        Which attribute the mm came from; ``none``: ratios and grades only.
    spacing_mm : tuple of float or None
        ``(row, column)`` spacing used for heights.
    magnification_factor : float or None
        EstimatedRadiographicMagnificationFactor that divided ImagerPixelSpacing.
    level_rule : LevelRule
        How vertebrae were named.
    vertebrae : list of VertebraFinding
        Top to bottom.
    model : str
        Name and version of the keypoint model (algorithm identification).
    cutoffs : tuple of float
        ``(mild, moderate, severe)``: the upper bounds of G the grades were given with (the
        site's settings at analysis time), so a result sent again later still states them.
    """

    status: VertebralStatus
    reason: str | None = None
    view: str = "unknown"
    view_source: ViewSource = ViewSource.NONE
    view_score: Score | None = None
    spacing_basis: SpacingBasis = SpacingBasis.NONE
    spacing_mm: tuple[float, float] | None = None
    magnification_factor: float | None = None
    level_rule: LevelRule = LevelRule.FROM_TOP
    vertebrae: list[VertebraFinding] = Field(default_factory=list)
    model: str = ""
    cutoffs: tuple[Score, Score, Score] = (0.80, 0.75, 0.60)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.status is not VertebralStatus.ANALYSED and self.vertebrae:
            raise ValueError("only an analysed image has vertebrae")
        if self.status is VertebralStatus.ANALYSED and not self.vertebrae:
            raise ValueError("an analysed image has at least one vertebra")
        if self.status is not VertebralStatus.ANALYSED and not self.reason:
            raise ValueError("an image not analysed for fractures says why")
        if (self.spacing_mm is None) != (self.spacing_basis is SpacingBasis.NONE):
            raise ValueError("spacing_mm is set exactly when the spacing basis is not none")
        numbers = [v.number for v in self.vertebrae]
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError("vertebrae are numbered 1..n from the top")
        if self.level_rule is LevelRule.FROM_TOP and any(v.level for v in self.vertebrae):
            raise ValueError("levels are named only when the sacrum rule established them")
        return self

    @property
    def analysed(self) -> bool:
        """Whether the image was analysed for vertebral fractures."""
        return self.status is VertebralStatus.ANALYSED

    @property
    def worst_grade(self) -> GenantGrade:
        """The worst grade in the image (normal when none was analysed)."""
        return worst([v.grade for v in self.vertebrae])

    @property
    def lowest_genant(self) -> float | None:
        """The lowest Genant index in the image (None when none was analysed)."""
        return min((v.genant_index for v in self.vertebrae), default=None)

    def grade_counts(self) -> dict[GenantGrade, int]:
        """Count the vertebrae at each grade (every grade present as a key)."""
        counts = dict.fromkeys(GenantGrade, 0)
        for v in self.vertebrae:
            counts[v.grade] += 1
        return counts
