"""Read the node's TID 1500 SR back into findings, with highdicom.

The inverse of `spinexr.node.outputs.sr.build_sr`, for tests and for tools that must know
what a stored report says (a re-send check, the admin pages): each TID 1410 planar ROI group
becomes a `Finding` (lesion class from its finding code, the bounds of its SCOORD region and
the image it is drawn on, detection score, tracking identifier and UID); the TID 1501 groups
give the study's and each image's probability, threshold and decision; the ``Qualitative
Evaluations`` container gives the CID 6047 outcome, the summary text and the reasons images
failed. The vertebral fracture analysis (`spinexr.node.outputs.vertebrae_sr`) is read by
`read_vertebrae` (each vertebra's planar ROI group joined with its heights group by Tracking
UID) and `read_vertebral_analyses` (each image's summary group).

highdicom parses the document (`highdicom.sr.ComprehensiveSR.from_dataset`,
`highdicom.sr.MeasurementReport.from_sequence`) and finds the groups
(``get_planar_roi_measurement_groups``, ``get_image_measurement_groups``); the node's
private codes are matched by value and scheme (`spinexr.node.outputs.codes`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from highdicom.sr import (
    Comprehensive3DSR,
    ComprehensiveSR,
    MeasurementReport,
    SourceImageForRegion,
    ValueTypeValues,
)
from highdicom.sr.utils import find_content_items
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import Comprehensive3DSRStorage

from spinexr.node.outputs import codes
from spinexr.node.outputs.vertebrae_tracking import HEIGHT_PAIRS, OUTLINE_ORDER, identifier_number
from spinexr.pipeline.classes import LesionClass
from spinexr.pipeline.results import Box, Outcome
from spinexr.pipeline.vertebrae.findings import LevelRule, VertebralStatus
from spinexr.pipeline.vertebrae.genant import HEIGHT_NAMES, Deformity, GenantGrade

logger = logging.getLogger(__name__)

_Key = tuple[str, str]

OUTCOMES: dict[_Key, Outcome] = {
    (codes.OUTCOME_WITH_FINDINGS.value, "DCM"): Outcome.ABNORMAL,
    (codes.PARTIAL_WITH_FINDINGS.value, "DCM"): Outcome.ABNORMAL,
    (codes.NO_ABNORMAL_FINDING.value, "DCM"): Outcome.NO_FINDING,
    (codes.PARTIAL_WITHOUT_FINDINGS.value, "DCM"): Outcome.NO_FINDING,
    (codes.OUTCOME_FAILED.value, "DCM"): Outcome.FAILED,
}
"""CID 6047 outcome code (value, scheme) → the study outcome it reports."""


@dataclass(frozen=True)
class Finding:
    """One box reported by a TID 1410 planar ROI group.

    Attributes
    ----------
    label : LesionClass
        The class whose finding code the group carries.
    xmin, ymin, xmax, ymax : float
        Bounds of the region's points, in the referenced image's pixels (origin at the
        top-left corner of the top-left pixel, as written).
    score : float or None
        The ``Detection confidence score`` measurement (None when absent).
    sop_instance_uid : str
        The image the region is drawn on.
    tracking_id : str
        Tracking Identifier (e.g. ``"box 1 Osteophytes"``).
    tracking_uid : str
        Tracking UID (the GSPS graphic of the same box has the same).
    """

    label: LesionClass
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    score: float | None
    sop_instance_uid: str
    tracking_id: str
    tracking_uid: str

    @property
    def corners(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)``."""
        return (self.xmin, self.ymin, self.xmax, self.ymax)

    def to_box(self) -> Box:
        """Return the finding as a displayed `Box` (score 0 when the SR has none).

        Returns
        -------
        Box
            Same class and corners.
        """
        return Box(
            label=self.label,
            score=0.0 if self.score is None else self.score,
            xmin=self.xmin,
            ymin=self.ymin,
            xmax=self.xmax,
            ymax=self.ymax,
        )


@dataclass(frozen=True)
class Assessment:
    """A TID 1501 classification group: the study's or one image's.

    Attributes
    ----------
    tracking_id : str
        E.g. ``"study abnormality"`` or ``"image 2 abnormality"``.
    sop_instance_uid : str or None
        The image the group references; None for the study group.
    probability : float or None
        ``Abnormality probability`` (None for a failed study).
    threshold : float or None
        ``Decision threshold``.
    decision : bool or None
        ``Abnormal at decision threshold`` (Yes/No).
    """

    tracking_id: str
    sop_instance_uid: str | None
    probability: float | None
    threshold: float | None
    decision: bool | None


@dataclass(frozen=True)
class ReportContents:
    """What one of the node's SRs says.

    Attributes
    ----------
    outcome : Outcome
        From the CID 6047 ``CAD Processing and Findings Summary`` code.
    outcome_code : pydicom.sr.coding.Code
        That code.
    summary : str
        The ``Summary`` text.
    study : Assessment or None
        The study group (None when the SR has none).
    images : tuple of Assessment
        One per analysed image, in document order.
    findings : tuple of Finding
        One per planar ROI group, in document order.
    failures : tuple of str
        The ``Analysis failed`` texts (one per image that could not be analysed).
    """

    outcome: Outcome
    outcome_code: Code
    summary: str
    study: Assessment | None
    images: tuple[Assessment, ...]
    findings: tuple[Finding, ...]
    failures: tuple[str, ...]

    @property
    def probability(self) -> float | None:
        """The study probability (None for a failed study)."""
        return None if self.study is None else self.study.probability

    @property
    def decision(self) -> bool | None:
        """The study decision (None for a failed study)."""
        return None if self.study is None else self.study.decision


def read_findings(sr: Dataset) -> list[Finding]:
    """Return the boxes an SR reports.

    Parameters
    ----------
    sr : pydicom.dataset.Dataset
        A Comprehensive SR written by `spinexr.node.outputs.sr.build_sr` (e.g. read with
        ``pydicom.dcmread``).

    Returns
    -------
    list of Finding
        One per TID 1410 planar ROI group, in document order (the SR's box numbering).

    Raises
    ------
    ValueError
        If the document is not a TID 1500 Measurement Report, a group has no image region
        or an unknown finding code.
    """
    return _findings(_report(sr))


def read_report(sr: Dataset) -> ReportContents:
    """Return everything an SR of the node reports.

    Parameters
    ----------
    sr : pydicom.dataset.Dataset
        A Comprehensive SR written by `spinexr.node.outputs.sr.build_sr`.

    Returns
    -------
    ReportContents
        Outcome, summary, study and image assessments, findings and failure reasons.

    Raises
    ------
    ValueError
        If the document is not a TID 1500 Measurement Report, has no (known) outcome code,
        or a group cannot be read.
    """
    report = _report(sr)
    study: Assessment | None = None
    images: list[Assessment] = []
    for group in report.get_image_measurement_groups(
        finding_type=codes.SPINE_RADIOGRAPH_ABNORMALITY
    ):
        sources = group.source_images
        assessment = Assessment(
            tracking_id=str(group.tracking_identifier or ""),
            sop_instance_uid=str(sources[0].referenced_sop_instance_uid) if sources else None,
            probability=_measurement(group, codes.ABNORMALITY_PROBABILITY),
            threshold=_measurement(group, codes.DECISION_THRESHOLD),
            decision=_decision(group),
        )
        if sources:
            images.append(assessment)
        elif study is None:
            study = assessment
        else:
            raise ValueError("the SR has more than one study abnormality group")

    root = report[0]
    containers = _children(root, codes.QUALITATIVE_EVALUATIONS, ValueTypeValues.CONTAINER)
    if not containers:
        raise ValueError("the SR has no Qualitative Evaluations container")
    container = containers[0]
    outcome_items = _children(container, codes.PROCESSING_SUMMARY, ValueTypeValues.CODE)
    if not outcome_items:
        raise ValueError("the SR has no CAD Processing and Findings Summary")
    concept = outcome_items[0].ConceptCodeSequence[0]
    key = (str(concept.CodeValue), str(concept.CodingSchemeDesignator))
    if key not in OUTCOMES:
        raise ValueError(f"unknown outcome code {key}")
    summaries = _children(container, codes.SUMMARY, ValueTypeValues.TEXT)
    failures = _children(container, codes.ANALYSIS_FAILED, ValueTypeValues.TEXT)
    return ReportContents(
        outcome=OUTCOMES[key],
        outcome_code=Code(key[0], key[1], str(concept.CodeMeaning)),
        summary=str(summaries[0].TextValue) if summaries else "",
        study=study,
        images=tuple(images),
        findings=tuple(_findings(report)),
        failures=tuple(str(item.TextValue) for item in failures),
    )


Point = tuple[float, float]
Point3 = tuple[float, float, float]


@dataclass(frozen=True)
class ReportedVertebra:
    """One vertebra an SR reports (its TID 1501 group).

    Attributes
    ----------
    sop_instance_uid : str
        The image its outline is drawn on.
    tracking_id, tracking_uid : str
        Tracking Identifier and UID (the GSPS lines of the vertebra carry the same).
    number : int or None
        Number from the top (from the tracking identifier).
    level : str or None
        ``"L1"`` etc. from the CID 7603 finding site; None when the level is not established.
    genant_index : float
        ``Genant index``.
    grade : GenantGrade
        ``Genant grade``.
    deformity : Deformity
        ``Vertebral deformity type``.
    score : float or None
        ``Detection confidence score``.
    spacing : str
        ``Pixel spacing used for heights`` (a `codes.SPACING_CODES` key).
    heights_mm : tuple of float or None
        ``(h_a, h_m, h_p)`` in mm; None when the SR has no heights (no pixel spacing).
    height_lines : tuple
        Three ``((x_top, y_top), (x_bottom, y_bottom))`` lines, anterior, middle, posterior:
        the heights' own SCOORDs, or the outline's keypoints when there are no heights.
    outline : tuple of (float, float)
        The closed outline's seven points.
    """

    sop_instance_uid: str
    tracking_id: str
    tracking_uid: str
    number: int | None
    level: str | None
    genant_index: float
    grade: GenantGrade
    deformity: Deformity
    score: float | None
    spacing: str
    heights_mm: tuple[float, float, float] | None
    height_lines: tuple[tuple[Point, Point], ...]
    outline: tuple[Point, ...]


@dataclass(frozen=True)
class ReportedVertebralAnalysis:
    """An image's vertebral summary group.

    Attributes
    ----------
    sop_instance_uid : str
        The image.
    status : VertebralStatus
        Analysed, or why not.
    worst_grade : GenantGrade or None
        None when the image was not analysed.
    grade_counts : dict of GenantGrade to int
        Vertebrae at each grade (empty when not analysed).
    lowest_genant : float or None
        The lowest Genant index.
    level_rule : LevelRule or None
        How vertebrae were named.
    spacing : str or None
        The spacing basis (a `codes.SPACING_CODES` key).
    """

    sop_instance_uid: str
    status: VertebralStatus
    worst_grade: GenantGrade | None
    grade_counts: dict[GenantGrade, int]
    lowest_genant: float | None
    level_rule: LevelRule | None
    spacing: str | None


def read_vertebrae(sr: Dataset) -> list[ReportedVertebra]:
    """Return the vertebrae an SR reports.

    Parameters
    ----------
    sr : pydicom.dataset.Dataset
        A Comprehensive SR written by `spinexr.node.outputs.sr.build_sr`.

    Returns
    -------
    list of ReportedVertebra
        One per vertebra group, in document order (image order, top to bottom).

    Raises
    ------
    ValueError
        If the document is not a TID 1500 Measurement Report or a vertebra group lacks its
        region, Genant index, grade or deformity, or has an unknown code.
    """
    report = _report(sr)
    out: list[ReportedVertebra] = []
    for group in report.get_image_measurement_groups(finding_type=codes.VERTEBRA):
        uid = str(group.tracking_uid or "")
        found = group.get_measurements(name=codes.GENANT_INDEX)
        regions = found[0].referenced_coordinates if found else []
        if not regions:
            raise ValueError(f"vertebra group {uid} has no outline or no Genant index")
        region = regions[0]
        if region.value_type == ValueTypeValues.SCOORD3D:
            continue  # a CT vertebra (read_ct_vertebrae)
        outline = np.asarray(region.value, dtype=np.float64).reshape(-1, 2)
        heights = _heights(group)
        lengths, lines = heights if heights is not None else (None, _outline_lines(outline))
        identifier = str(group.tracking_identifier or "")
        out.append(
            ReportedVertebra(
                sop_instance_uid=_region_image(region),
                tracking_id=identifier,
                tracking_uid=uid,
                number=identifier_number(identifier),
                level=_level(group.finding_sites),
                genant_index=float(found[0].value),
                grade=GenantGrade(_evaluation(group, codes.GENANT_GRADE, codes.GRADE_CODES)),
                deformity=Deformity(_evaluation(group, codes.DEFORMITY, codes.DEFORMITY_CODES)),
                score=_measurement(group, codes.DETECTION_SCORE),
                spacing=_evaluation(group, codes.SPACING_BASIS, codes.SPACING_CODES),
                heights_mm=lengths,
                height_lines=lines,
                outline=tuple((float(x), float(y)) for x, y in outline),
            )
        )
    return out


def read_vertebral_analyses(sr: Dataset) -> list[ReportedVertebralAnalysis]:
    """Return each image's vertebral summary group.

    Parameters
    ----------
    sr : pydicom.dataset.Dataset
        A Comprehensive SR written by `spinexr.node.outputs.sr.build_sr`.

    Returns
    -------
    list of ReportedVertebralAnalysis
        In document order (image order).

    Raises
    ------
    ValueError
        If a summary group references no image or has an unknown code.
    """
    out: list[ReportedVertebralAnalysis] = []
    for group in _report(sr).get_image_measurement_groups(finding_type=codes.VERTEBRAL_ANALYSIS):
        sources = group.source_images
        if not sources:
            raise ValueError(f"vertebral summary {group.tracking_identifier!r} has no image")
        status = VertebralStatus(_evaluation(group, codes.VERTEBRAL_STATUS, codes.STATUS_CODES))
        analysed = status is VertebralStatus.ANALYSED
        out.append(
            ReportedVertebralAnalysis(
                sop_instance_uid=str(sources[0].referenced_sop_instance_uid),
                status=status,
                worst_grade=GenantGrade(
                    _evaluation(group, codes.WORST_GENANT_GRADE, codes.GRADE_CODES)
                )
                if analysed
                else None,
                grade_counts={
                    g: int(_measurement(group, codes.VERTEBRAE_AT_GRADE[g.value]) or 0)
                    for g in GenantGrade
                }
                if analysed
                else {},
                lowest_genant=_measurement(group, codes.GENANT_INDEX),
                level_rule=LevelRule(_evaluation(group, codes.LEVEL_RULE, codes.LEVEL_RULE_CODES))
                if analysed
                else None,
                spacing=_evaluation(group, codes.SPACING_BASIS, codes.SPACING_CODES)
                if analysed
                else None,
            )
        )
    return out


@dataclass(frozen=True)
class ReportedCtVertebra:
    """One CT vertebra an SR reports (its TID 1501 group with SCOORD3D).

    Attributes
    ----------
    tracking_id, tracking_uid : str
        Tracking Identifier and UID (the reformat's GSPS lines carry the same).
    number : int or None
        Number from the top.
    genant_index : float
        ``Genant index``.
    grade : GenantGrade
        ``Genant grade``.
    deformity : Deformity
        ``Vertebral deformity type``.
    score : float or None
        ``Detection confidence score``.
    heights_mm : tuple of float
        ``(h_a, h_m, h_p)``.
    height_lines : tuple
        Three ``(top, bottom)`` LPS points (mm), anterior, middle, posterior.
    outline : tuple of (float, float, float)
        The closed outline's seven LPS points.
    frame_of_reference_uid : str
        The frame of reference of every point.
    characterisation : str or None
        ``"malignant"`` or ``"benign"`` when the vertebra was characterised.
    malignancy_probability : float or None
        Its malignancy probability.
    """

    tracking_id: str
    tracking_uid: str
    number: int | None
    genant_index: float
    grade: GenantGrade
    deformity: Deformity
    score: float | None
    heights_mm: tuple[float, float, float]
    height_lines: tuple[tuple[Point3, Point3], ...]
    outline: tuple[Point3, ...]
    frame_of_reference_uid: str
    characterisation: str | None = None
    malignancy_probability: float | None = None

    @property
    def centre(self) -> Point3:
        """The mean of the six keypoints (LPS mm)."""
        pts = np.asarray(self.outline[:-1], dtype=np.float64)
        x, y, z = pts.mean(axis=0)
        return float(x), float(y), float(z)


@dataclass(frozen=True)
class ReportedCtAnalysis:
    """The SR's CT summary group and note.

    Attributes
    ----------
    status : str
        A `codes.CT_STATUS_CODES` key (``analysed``, ``no_eligible_series``...).
    worst_grade : GenantGrade or None
        For an analysed series.
    lowest_genant : float or None
        For an analysed series.
    note : str
        The ``CT vertebral fracture analysis note``.
    characterisation_status : str or None
        A `codes.CHARACTERISATION_STATUS_CODES` key, when the characterisation ran.
    characterisation : str or None
        The study's call (``"malignant"`` when a characterised vertebra is).
    """

    status: str
    worst_grade: GenantGrade | None
    lowest_genant: float | None
    note: str
    characterisation_status: str | None = None
    characterisation: str | None = None


def read_ct_vertebrae(sr: Dataset) -> list[ReportedCtVertebra]:
    """Return the CT vertebrae an SR reports, in document order (top to bottom).

    Parameters
    ----------
    sr : pydicom.dataset.Dataset
        A (Comprehensive 3D) SR written by `spinexr.node.outputs.sr.build_sr`.

    Returns
    -------
    list of ReportedCtVertebra
        One per CT vertebra group.
    """
    out: list[ReportedCtVertebra] = []
    for group in _report(sr).get_image_measurement_groups(finding_type=codes.VERTEBRA):
        found = group.get_measurements(name=codes.GENANT_INDEX)
        regions = found[0].referenced_coordinates if found else []
        if not regions or regions[0].value_type != ValueTypeValues.SCOORD3D:
            continue
        outline = np.asarray(regions[0].value, dtype=np.float64).reshape(-1, 3)
        heights: dict[str, tuple[float, tuple[Point3, Point3]]] = {}
        for measurement in group.get_measurements(name=codes.HEIGHT):
            modifiers = [s.topographical_modifier for s in measurement.finding_sites]
            name = _key(next(m for m in modifiers if m is not None), codes.HEIGHT_SITE_MODIFIERS)
            (scoord,) = measurement.referenced_coordinates
            top, bottom = (_point3(p) for p in np.asarray(scoord.value).reshape(2, 3))
            heights[name] = (float(measurement.value), (top, bottom))
        if set(heights) != set(HEIGHT_NAMES):
            raise ValueError(f"CT vertebra {group.tracking_uid} has heights {sorted(heights)}")
        identifier = str(group.tracking_identifier or "")
        a, m, p = (heights[n] for n in HEIGHT_NAMES)
        out.append(
            ReportedCtVertebra(
                tracking_id=identifier,
                tracking_uid=str(group.tracking_uid or ""),
                number=identifier_number(identifier),
                genant_index=float(found[0].value),
                grade=GenantGrade(_evaluation(group, codes.GENANT_GRADE, codes.GRADE_CODES)),
                deformity=Deformity(_evaluation(group, codes.DEFORMITY, codes.DEFORMITY_CODES)),
                score=_measurement(group, codes.DETECTION_SCORE),
                heights_mm=(a[0], m[0], p[0]),
                height_lines=(a[1], m[1], p[1]),
                outline=tuple(_point3(q) for q in outline),
                frame_of_reference_uid=str(regions[0].ReferencedFrameOfReferenceUID),
                characterisation=_optional_evaluation(
                    group, codes.FRACTURE_CHARACTERISATION, codes.CHARACTERISATION_CODES
                ),
                malignancy_probability=_measurement(group, codes.MALIGNANCY_PROBABILITY),
            )
        )
    return out


def read_ct_analysis(sr: Dataset) -> ReportedCtAnalysis | None:
    """Return the SR's CT summary (None when the study had no CT).

    Parameters
    ----------
    sr : pydicom.dataset.Dataset
        An SR written by `spinexr.node.outputs.sr.build_sr`.

    Returns
    -------
    ReportedCtAnalysis or None
        Status, worst grade, lowest G and the note.
    """
    report = _report(sr)
    groups = report.get_image_measurement_groups(finding_type=codes.CT_VERTEBRAL_ANALYSIS)
    if not groups:
        return None
    group = groups[0]
    status = _evaluation(group, codes.VERTEBRAL_STATUS, codes.CT_STATUS_CODES)
    analysed = status == "analysed"
    notes = [
        str(item.TextValue)
        for item in find_content_items(
            sr, name=codes.CT_NOTE, value_type=ValueTypeValues.TEXT, recursive=True
        )
    ]
    return ReportedCtAnalysis(
        status=status,
        worst_grade=GenantGrade(_evaluation(group, codes.WORST_GENANT_GRADE, codes.GRADE_CODES))
        if analysed
        else None,
        lowest_genant=_measurement(group, codes.GENANT_INDEX),
        note=notes[0] if notes else "",
        characterisation_status=_optional_evaluation(
            group, codes.CHARACTERISATION_STATUS, codes.CHARACTERISATION_STATUS_CODES
        ),
        characterisation=_optional_evaluation(
            group, codes.FRACTURE_CHARACTERISATION, codes.CHARACTERISATION_CODES
        ),
    )


def _optional_evaluation(group: Any, name: Code, table: Mapping[str, Code]) -> str | None:
    found = group.get_qualitative_evaluations(name=name)
    return _key(found[0].value, table) if found else None


def _point3(values: Any) -> Point3:
    x, y, z = (float(v) for v in values)
    return x, y, z


def lesion_class(value: str, scheme: str) -> LesionClass:
    """Return the lesion class of a finding code.

    Parameters
    ----------
    value, scheme : str
        Code Value and Coding Scheme Designator.

    Returns
    -------
    LesionClass
        The class `spinexr.node.outputs.codes.FINDING_CODES` maps to that code.

    Raises
    ------
    ValueError
        If no class has the code.
    """
    for label, code in codes.FINDING_CODES.items():
        if (code.value, code.scheme_designator) == (value, scheme):
            return label
    raise ValueError(f"finding code ({value}, {scheme}) is not one of the node's classes")


# ----------------------------------------------------------------------------- helpers


def _report(sr: Dataset) -> MeasurementReport:
    # copy=True: highdicom would otherwise turn the caller's dataset into its own class.
    three_d = str(sr.get("SOPClassUID", "")) == str(Comprehensive3DSRStorage)
    document = (Comprehensive3DSR if three_d else ComprehensiveSR).from_dataset(sr, copy=True)
    return MeasurementReport.from_sequence(document.content, copy=False)


def _findings(report: MeasurementReport) -> list[Finding]:
    out: list[Finding] = []
    for group in report.get_planar_roi_measurement_groups():
        finding = group.finding_type
        if finding is None:
            raise ValueError(f"ROI group {group.tracking_identifier!r} has no finding code")
        if any(_is(finding, code) for code in _NOT_LESIONS):
            continue  # where an abnormality or a vertebral summary is drawn
        region = group.roi
        if region is None:
            raise ValueError(f"ROI group {group.tracking_identifier!r} has no image region")
        points = np.asarray(region.value, dtype=np.float64).reshape(-1, 2)
        out.append(
            Finding(
                label=lesion_class(str(finding.value), str(finding.scheme_designator)),
                xmin=float(points[:, 0].min()),
                ymin=float(points[:, 1].min()),
                xmax=float(points[:, 0].max()),
                ymax=float(points[:, 1].max()),
                score=_located_measurement(report, group, codes.DETECTION_SCORE),
                sop_instance_uid=_region_image(region),
                tracking_id=str(group.tracking_identifier or ""),
                tracking_uid=str(group.tracking_uid or ""),
            )
        )
    return out


_NOT_LESIONS = (codes.VERTEBRA, codes.SPINE_RADIOGRAPH_ABNORMALITY, codes.VERTEBRAL_ANALYSIS)
# (Vertebra: the planar ROI groups of output format 1.)
"""Finding types of the planar ROI groups that are not lesion boxes."""


def _region_image(region: Dataset) -> str:
    """Return the SOP Instance UID of the image a SCOORD region is selected from."""
    for item in region.get("ContentSequence", []):
        if item.get("ValueType") == ValueTypeValues.IMAGE.value:
            return str(SourceImageForRegion.from_dataset(item).referenced_sop_instance_uid)
    raise ValueError("an image region references no source image")


def _measurement(group: Any, name: Code) -> float | None:
    found = group.get_measurements(name=name)
    return float(found[0].value) if found else None


def _located_measurement(report: MeasurementReport, roi: Any, name: Code) -> float | None:
    """Return a measurement of a planar ROI group's result.

    From the TID 1501 group with the same tracking UID (`spinexr.node.outputs.located`),
    else from the ROI group itself (the encoding of output format 1).
    """
    uid = str(roi.tracking_uid or "")
    for group in report.get_image_measurement_groups(tracking_uid=uid) if uid else []:
        value = _measurement(group, name)
        if value is not None:
            return value
    return _measurement(roi, name)


def _decision(group: Any) -> bool | None:
    found = group.get_qualitative_evaluations(name=codes.ABNORMAL_DECISION)
    if not found:
        return None
    value = found[0].value
    key = (str(value.value), str(value.scheme_designator))
    if key == (codes.YES.value, codes.YES.scheme_designator):
        return True
    if key == (codes.NO.value, codes.NO.scheme_designator):
        return False
    raise ValueError(f"decision code {key} is neither Yes nor No")


def _children(item: Dataset, name: Code, value_type: ValueTypeValues) -> list[Dataset]:
    return list(find_content_items(item, name=name, value_type=value_type))


def _is(concept: Any, code: Code) -> bool:
    """Whether a coded concept has a code's value and scheme."""
    return (str(concept.value), str(concept.scheme_designator)) == (
        code.value,
        code.scheme_designator,
    )


def _key(concept: Any, table: Mapping[str, Code]) -> str:
    """Return the key of ``table`` whose code is ``concept`` (value and scheme)."""
    for key, code in table.items():
        if _is(concept, code):
            return key
    raise ValueError(f"unknown code ({concept.value}, {concept.scheme_designator})")


def _evaluation(group: Any, name: Code, table: Mapping[str, Code]) -> str:
    found = group.get_qualitative_evaluations(name=name)
    if not found:
        raise ValueError(f"group {group.tracking_identifier!r} has no {name.meaning!r}")
    return _key(found[0].value, table)


def _level(sites: list[Any]) -> str | None:
    for site in sites:
        try:
            return _key(site.value, codes.VERTEBRA_LEVELS)
        except ValueError:
            continue
    return None


def _heights(
    group: Any,
) -> tuple[tuple[float, float, float], tuple[tuple[Point, Point], ...]] | None:
    """Return a vertebra's ``(h_a, h_m, h_p)`` and their lines, by site modifier.

    None when its group has no heights (no pixel spacing).
    """
    found: dict[str, tuple[float, tuple[Point, Point]]] = {}
    for measurement in group.get_measurements(name=codes.HEIGHT):
        modifiers = [s.topographical_modifier for s in measurement.finding_sites]
        name = _key(next(m for m in modifiers if m is not None), codes.HEIGHT_SITE_MODIFIERS)
        (scoord,) = measurement.referenced_coordinates
        (top, bottom) = np.asarray(scoord.value, dtype=np.float64).reshape(2, 2)
        line = ((float(top[0]), float(top[1])), (float(bottom[0]), float(bottom[1])))
        found[name] = (float(measurement.value), line)
    if not found:
        return None
    if set(found) != set(HEIGHT_NAMES):
        raise ValueError(f"heights group {group.tracking_uid} has heights {sorted(found)}")
    a, m, p = (found[name] for name in HEIGHT_NAMES)
    return (a[0], m[0], p[0]), (a[1], m[1], p[1])


def _outline_lines(outline: np.ndarray) -> tuple[tuple[Point, Point], ...]:
    """Return the height lines from a vertebra's outline (keypoint order restored)."""
    keypoints = {index: outline[position] for position, index in enumerate(OUTLINE_ORDER)}
    return tuple(
        (
            (float(keypoints[top][0]), float(keypoints[top][1])),
            (float(keypoints[bottom][0]), float(keypoints[bottom][1])),
        )
        for top, bottom in HEIGHT_PAIRS
    )
