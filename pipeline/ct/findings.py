"""Typed, JSON-serialisable result of the vertebral fracture analysis of a study's CT.

`CtAnalysis` hangs off `spinexr.pipeline.results.StudyResult.ct`; the SR, the reformat's
Secondary Capture and GSPS, the admin pages and ``analyze`` read it. A study with CT images
always gets one, with a `CtStatus` that says whether a series was analysed and, if not, why
(no eligible series, a refused volume, no vertebral column, no CT model), plus the verdict
on every series of the study (chosen, or why not), so the radiologist and the admin see why
the node looked at the series it did.

Each vertebra is reported twice over: as a `VertebraFinding` on the straightened
mid-sagittal reformat (keypoints in its pixels; what the reformat's GSPS draws), and by its
six keypoints in the patient (LPS mm, the CT's frame of reference; what the SR's SCOORD3D
carry). Its heights in mm are measured in 3D between the patient points.
"""

from __future__ import annotations

import enum
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spinexr.pipeline.spacing import SpacingBasis
from spinexr.pipeline.vertebrae.findings import (
    LevelRule,
    Score,
    VertebraFinding,
    VertebralAnalysis,
    VertebralStatus,
)
from spinexr.pipeline.vertebrae.genant import GenantGrade, worst

Finite = Annotated[float, Field(allow_inf_nan=False)]
Point3 = tuple[Finite, Finite, Finite]

REFORMAT_VIEW = "ct_reformat"
"""The `VertebralAnalysis.view` of the straightened reformat."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class CtStatus(enum.StrEnum):
    """Whether the study's CT was analysed for vertebral fractures, and if not, why."""

    ANALYSED = "analysed"
    NOT_ANALYSED = "not_analysed"
    """A stated refusal (`reason` is a `spinexr.pipeline.ct.errors.CtRefusal` value, or
    ``no_vertebrae``)."""
    NO_MODEL = "no_model"
    """The bundle has no CT models, or the site turned CT analysis off."""
    FAILED = "failed"
    """The study's analysis failed as a whole (the "analysis failed" report)."""


class CtSeriesVerdict(_Model):
    """One series of the study and what selection made of it.

    Attributes
    ----------
    series_instance_uid : str
        The series.
    series_number : int or None
        Series Number.
    instances : int
        Its instances.
    chosen : bool
        The series analysed.
    reasons : list of str
        Why it was not chosen (``code: detail``; UIDs, counts, mm and defined terms only).
    """

    series_instance_uid: str
    series_number: int | None = None
    instances: int = Field(ge=0)
    chosen: bool = False
    reasons: list[str] = Field(default_factory=list)


class CharacterisationStatus(enum.StrEnum):
    """Whether the study's fractured vertebrae were characterised (benign / malignant)."""

    CHARACTERISED = "characterised"
    NOT_APPLICABLE = "not_applicable"
    """No vertebra at or above the trigger grade."""
    NOT_POSSIBLE = "not_possible"
    """The vertebrae to characterise are too close to the edge of the field of view."""
    NO_MODEL = "no_model"
    """The bundle has no characterisation model."""


class VertebraCharacterisation(_Model):
    """Li et al.'s benign / malignant call on one vertebra.

    Attributes
    ----------
    probability : float
        Malignancy probability: the highest slice probability.
    threshold : float
        Malignant at or above it.
    malignant : bool
        The decision.
    slice_probabilities : list of float
        Per sagittal slice scored.
    slice_offsets_mm : list of float
        Each slice's lateral offset from the vertebra's mid-sagittal plane.
    """

    probability: Score
    threshold: Score
    malignant: bool
    slice_probabilities: list[Score] = Field(min_length=1)
    slice_offsets_mm: list[Finite] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.malignant != (self.probability >= self.threshold):
            raise ValueError("malignant is probability >= threshold")
        if len(self.slice_probabilities) != len(self.slice_offsets_mm):
            raise ValueError("one offset per slice probability")
        return self

    @property
    def label(self) -> str:
        """``"malignant"`` or ``"benign"``."""
        return "malignant" if self.malignant else "benign"


class CtVertebraFinding(_Model):
    """One vertebra found on the reformat, and where it is in the patient.

    Attributes
    ----------
    finding : VertebraFinding
        On the reformat: keypoints in its pixels (``(x, y)``, origin at the top-left corner
        of the top-left pixel), heights in reformat pixels, heights in mm measured in 3D,
        Genant index, grade, deformity, number and level.
    keypoints_lps : list of (float, float, float)
        The six keypoints in the patient (LPS mm), `genant.KEYPOINT_NAMES` order.
    characterisation : VertebraCharacterisation or None
        Benign or malignant, for the vertebrae the characterisation looked at.
    """

    finding: VertebraFinding
    keypoints_lps: list[Point3] = Field(min_length=6, max_length=6)
    characterisation: VertebraCharacterisation | None = None

    @property
    def centre_lps(self) -> Point3:
        """The body's centre: the mean of the six keypoints (LPS mm)."""
        n = len(self.keypoints_lps)
        x, y, z = (sum(p[i] for p in self.keypoints_lps) / n for i in range(3))
        return (x, y, z)


class CtAnalysis(_Model):
    """The vertebral fracture analysis of a study's CT.

    Attributes
    ----------
    status : CtStatus
        Analysed, or why not.
    reason : str or None
        Machine-readable code when not analysed (a `CtRefusal` value, ``no_vertebrae``,
        ``no_model``).
    message : str or None
        One line: why not analysed (UIDs, counts, mm and degrees only).
    series : list of CtSeriesVerdict
        Every CT series of the study, the chosen one included.
    decided_by : list of str
        The selection rules that decided (eligibility, then the ranking rules that dropped
        a series).
    series_instance_uid : str or None
        The series analysed (or refused after being chosen).
    frame_of_reference_uid : str or None
        Its frame of reference: the SR's SCOORD3D are in it.
    slices : int or None
        Slices of the volume analysed.
    reformat_size : tuple of int or None
        ``(rows, columns)`` of the straightened mid-sagittal reformat.
    reformat_spacing_mm : tuple of float or None
        ``(row, column)`` spacing of the reformat, in mm along the straightened line.
    level_rule : LevelRule
        How vertebrae were named (on CT: numbered from the top).
    vertebrae : list of CtVertebraFinding
        Top to bottom.
    model : str
        Names and versions of the CT models (algorithm identification).
    cutoffs : tuple of float
        ``(mild, moderate, severe)`` upper bounds of G the grades were given with.
    timings : dict of str to float
        Seconds per stage: ``headers``, ``selection``, ``volume``, ``localisation``,
        ``straightening``, ``detection`` (and ``characterisation``).
    characterisation_status : CharacterisationStatus or None
        For an analysed CT with a characterisation model: characterised, or why not; None
        when the characterisation did not run (no analysed series).
    characterisation_note : str or None
        Why not, in words (e.g. "not applicable: no vertebra at or above the trigger
        grade (mild)").
    characteriser_trained_on : str or None
        What the characterisation model was trained on (the bundle's words), stated with
        its calls: a characterisation is decision support.
    """

    status: CtStatus
    reason: str | None = None
    message: str | None = None
    series: list[CtSeriesVerdict] = Field(default_factory=list)
    decided_by: list[str] = Field(default_factory=list)
    series_instance_uid: str | None = None
    frame_of_reference_uid: str | None = None
    slices: int | None = Field(default=None, ge=1)
    reformat_size: tuple[int, int] | None = None
    reformat_spacing_mm: tuple[float, float] | None = None
    level_rule: LevelRule = LevelRule.FROM_TOP
    vertebrae: list[CtVertebraFinding] = Field(default_factory=list)
    model: str = ""
    cutoffs: tuple[Score, Score, Score] = (0.80, 0.75, 0.60)
    timings: dict[str, Annotated[float, Field(ge=0.0)]] = Field(default_factory=dict)
    characterisation_status: CharacterisationStatus | None = None
    characterisation_note: str | None = None
    characteriser_trained_on: str | None = Field(default=None, max_length=300)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        analysed = self.status is CtStatus.ANALYSED
        characterised = any(v.characterisation is not None for v in self.vertebrae)
        if characterised != (self.characterisation_status is CharacterisationStatus.CHARACTERISED):
            raise ValueError("vertebrae carry a characterisation exactly when characterised")
        if analysed != bool(self.vertebrae):
            raise ValueError("an analysed CT has vertebrae, one not analysed has none")
        if analysed == (self.reason is not None):
            raise ValueError("a reason is given exactly when the CT was not analysed")
        if analysed and (
            self.series_instance_uid is None
            or self.frame_of_reference_uid is None
            or self.reformat_size is None
            or self.reformat_spacing_mm is None
        ):
            raise ValueError("an analysed CT names its series, frame of reference and reformat")
        numbers = [v.finding.number for v in self.vertebrae]
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError("vertebrae are numbered 1..n from the top")
        return self

    @property
    def analysed(self) -> bool:
        """Whether a series was analysed."""
        return self.status is CtStatus.ANALYSED

    @property
    def worst_grade(self) -> GenantGrade:
        """The worst grade (normal when nothing was analysed)."""
        return worst([v.finding.grade for v in self.vertebrae])

    @property
    def lowest_genant(self) -> float | None:
        """The lowest Genant index (None when nothing was analysed)."""
        return min((v.finding.genant_index for v in self.vertebrae), default=None)

    @property
    def worst_vertebra(self) -> VertebraFinding | None:
        """The vertebra with the lowest Genant index (None when nothing was analysed)."""
        if not self.vertebrae:
            return None
        return min(self.vertebrae, key=lambda v: v.finding.genant_index).finding

    @property
    def fractured_count(self) -> int:
        """How many vertebrae are graded mild or worse."""
        return sum(1 for v in self.vertebrae if v.finding.fractured)

    @property
    def characterised(self) -> list[CtVertebraFinding]:
        """The vertebrae with a benign / malignant call, top to bottom."""
        return [v for v in self.vertebrae if v.characterisation is not None]

    @property
    def fractured(self) -> bool:
        """Whether a vertebra is graded mild or worse."""
        return any(v.finding.fractured for v in self.vertebrae)

    def on_reformat(self) -> VertebralAnalysis:
        """Return the analysis as it lies on the reformat (what its GSPS and SR summary draw).

        Returns
        -------
        VertebralAnalysis
            Status ``analysed`` with the vertebrae in reformat pixels and heights in mm (3D),
            spacing the reformat's; or ``no_vertebrae`` / ``no_model`` with the reason.
        """
        if not self.analysed:
            status = {
                CtStatus.NO_MODEL: VertebralStatus.NO_MODEL,
                CtStatus.FAILED: VertebralStatus.FAILED,
            }.get(self.status, VertebralStatus.NO_VERTEBRAE)
            return VertebralAnalysis(
                status=status,
                reason=self.message or self.reason,
                view=REFORMAT_VIEW,
                model=self.model,
                cutoffs=self.cutoffs,
            )
        return VertebralAnalysis(
            status=VertebralStatus.ANALYSED,
            view=REFORMAT_VIEW,
            spacing_basis=SpacingBasis.PIXEL_SPACING,
            spacing_mm=self.reformat_spacing_mm,
            level_rule=self.level_rule,
            vertebrae=[v.finding for v in self.vertebrae],
            model=self.model,
            cutoffs=self.cutoffs,
        )
