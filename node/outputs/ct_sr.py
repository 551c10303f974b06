"""The CT vertebral fracture analysis in the study's TID 1500 SR (SCOORD3D in the CT's frame).

`ct_groups` returns the measurement groups `spinexr.node.outputs.sr.build_sr` adds for a
study whose result has a CT analysis, and `ct_notes` the TEXT item it adds to the
``Qualitative Evaluations`` container. A study with an analysed CT series gets a
Comprehensive 3D SR (SCOORD3D are not allowed in a Comprehensive SR).

- The **summary**, one TID 1501 group: tracking identifier ``"CT vertebral fracture
  analysis"``, finding type ``CT vertebral fracture analysis``, the CT series as its source
  images' series; ``Vertebral fracture analysis status`` (`codes.CT_STATUS_CODES`: analysed,
  or why not: no suitable series, a refused series, no vertebral column, no vertebra
  measurable, no CT model, failed); an analysed series adds the lowest Genant index, the
  number of vertebrae at each grade, the worst grade and the level rule (on CT: numbered
  from the top, level not established).
- Per **vertebra** (top to bottom), one TID 1501 group with the tracking identifier and UID
  its GSPS lines on the reformat carry (`vertebrae_tracking.ct_vertebra_trackings`), finding
  type SCT ``Vertebra``: ``Genant index`` and ``Detection confidence score`` each INFERRED
  FROM the body's outline (a closed SCOORD3D POLYLINE through the six keypoints in the
  patient), three ``Height`` measurements in mm (method ``Heights measured in 3D``), told
  apart by the finding site's topographical modifier, each INFERRED FROM its SCOORD3D
  POLYLINE of two points (top and bottom keypoint, LPS mm, the CT's Frame of Reference
  UID); qualitative evaluations ``Genant grade`` and ``Vertebral deformity type``.
- The **note**: the series analysed and the rules that chose it, and each other series with
  the reasons it was not (localizer, not original, outranked by ...), or why nothing was
  analysed.

Every group carries TID 4019 Algorithm Identification of the CT models.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CoordinatesForMeasurement3D,
    FindingSite,
    GraphicTypeValues3D,
    Measurement,
    MeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset

from spinexr.node.outputs import codes
from spinexr.node.outputs.located import Group
from spinexr.node.outputs.provenance import OUTPUT_FORMAT_VERSION, output_uid
from spinexr.node.outputs.source import ascii_text
from spinexr.node.outputs.vertebrae_sr import summary_figures
from spinexr.node.outputs.vertebrae_tracking import (
    HEIGHT_PAIRS,
    OUTLINE_ORDER,
    VertebraTracking,
    ct_vertebra_trackings,
)
from spinexr.pipeline.ct.findings import CtAnalysis, CtStatus, CtVertebraFinding
from spinexr.pipeline.results import StudyResult
from spinexr.pipeline.vertebrae.genant import HEIGHT_NAMES

SUMMARY_ID = "CT vertebral fracture analysis"


def has_3d_content(result: StudyResult) -> bool:
    """Return whether the study's SR carries SCOORD3D (a Comprehensive 3D SR is needed).

    Parameters
    ----------
    result : StudyResult
        The analysis.

    Returns
    -------
    bool
        True when a CT series was analysed.
    """
    return result.ct is not None and result.ct.analysed


def ct_outcome_text(ct: CtAnalysis) -> str:
    """Return the CT part of the SR's ``Summary``.

    Parameters
    ----------
    ct : CtAnalysis
        The analysis.

    Returns
    -------
    str
        E.g. ``"CT: no vertebral fracture (9 vertebrae, lowest G 0.86)."``, ``"CT: vertebral
        fracture, worst Genant grade severe (#6 G 0.54); 2 of 9 vertebrae mild or worse."``
        or ``"CT not analysed: no_eligible_series: <why>."``.
    """
    if not ct.analysed:
        return f"CT not analysed: {ct.reason}: {ct.message}."
    worst = ct.worst_vertebra
    assert worst is not None
    if not ct.fractured:
        return (
            f"CT: no vertebral fracture ({len(ct.vertebrae)} vertebrae, lowest G "
            f"{worst.genant_index:.2f})."
        )
    fractured = ct.fractured_count
    return (
        f"CT: vertebral fracture, worst Genant grade {ct.worst_grade.value} ({worst.label} G "
        f"{worst.genant_index:.2f}); {fractured} of {len(ct.vertebrae)} vertebrae mild or worse."
        + characterisation_text(ct)
    )


def status_key(ct: CtAnalysis) -> str:
    """Return the `codes.CT_STATUS_CODES` key of a CT analysis.

    Parameters
    ----------
    ct : CtAnalysis
        The analysis.

    Returns
    -------
    str
        ``analysed``, ``no_model``, ``failed``, the refusal code when it has its own code,
        else ``refused``.
    """
    if ct.status is CtStatus.ANALYSED:
        return "analysed"
    if ct.status is CtStatus.NO_MODEL:
        return "no_model"
    if ct.status is CtStatus.FAILED:
        return "failed"
    reason = ct.reason or ""
    return reason if reason in codes.CT_STATUS_CODES else "refused"


def ct_algorithm(ct: CtAnalysis, result: StudyResult) -> AlgorithmIdentification | None:
    """Return the TID 4019 identification of the CT models (None without a model).

    Parameters
    ----------
    ct : CtAnalysis
        The analysis (``model`` names the localiser and the keypoint model).
    result : StudyResult
        The study (bundle name and version).

    Returns
    -------
    highdicom.sr.AlgorithmIdentification or None
        The bundle's name and version, the models and the Genant cut-offs as parameters.
    """
    if not ct.model.strip():
        return None
    prov = result.provenance
    mild, moderate, severe = ct.cutoffs
    return AlgorithmIdentification(
        name=f"{prov.bundle_name} CT"[:64],
        version=prov.bundle_version[:64],
        parameters=[
            f"models={ct.model}"[:64],
            f"genant_cutoffs=mild<={mild:g},moderate<={moderate:g},severe<={severe:g}",
            f"level_rule={ct.level_rule.value}",
        ],
    )


def ct_groups(result: StudyResult, sources: Mapping[str, Dataset], root: str) -> list[Group]:
    """Return the SR measurement groups of a study's CT analysis.

    Parameters
    ----------
    result : StudyResult
        The analysis; without ``ct`` nothing is added.
    sources : mapping of str to pydicom.dataset.Dataset
        Headers by SOP Instance UID (the analysed series' slices, to reference it).
    root : str
        UID root (tracking UIDs).

    Returns
    -------
    list of highdicom groups
        The summary group, then one group per vertebra.
    """
    ct = result.ct
    if ct is None:
        return []
    algorithm = ct_algorithm(ct, result)
    series_source = next(
        (
            ds
            for ds in sources.values()
            if ct.series_instance_uid is not None
            and str(ds.get("SeriesInstanceUID", "")) == ct.series_instance_uid
        ),
        None,
    )
    groups: list[Group] = [_summary(result, ct, series_source, root, algorithm)]
    for tracking, vertebra in zip(ct_vertebra_trackings(result, root), ct.vertebrae, strict=True):
        assert ct.frame_of_reference_uid is not None
        groups.append(_vertebra(tracking, vertebra, ct.frame_of_reference_uid, algorithm))
    return groups


def ct_notes(result: StudyResult) -> list[TextContentItem]:
    """Return the ``CT vertebral fracture analysis note`` TEXT item (none without CT).

    Parameters
    ----------
    result : StudyResult
        The analysis.

    Returns
    -------
    list of highdicom.sr.TextContentItem
        One CONTAINS item (ASCII) for the ``Qualitative Evaluations`` container.
    """
    if result.ct is None:
        return []
    return [
        TextContentItem(
            name=codes.CT_NOTE,
            value=note_text(result.ct),
            relationship_type=RelationshipTypeValues.CONTAINS,
        )
    ]


def note_text(ct: CtAnalysis) -> str:
    """Return what the CT analysis concluded and why each series was or was not used.

    Parameters
    ----------
    ct : CtAnalysis
        The analysis.

    Returns
    -------
    str
        E.g. ``"CT series <uid> (2, 111 instances) analysed, chosen by eligibility,
        slice_spacing: worst Genant grade moderate (#8 G 0.68); 2 of 9 vertebrae mild or
        worse; vertebrae numbered from the top, level not established; heights in mm
        measured in 3D. Series not analysed: <uid> (1): localizer: ..."`` (ASCII).
    """
    if ct.analysed:
        chosen = next(s for s in ct.series if s.chosen)
        worst = ct.worst_vertebra
        assert worst is not None
        fractured = ct.fractured_count
        head = (
            f"CT series {chosen.series_instance_uid} ({chosen.series_number}, "
            f"{chosen.instances} instances, {ct.slices} slices) analysed, chosen by "
            f"{', '.join(ct.decided_by)}: worst Genant grade {ct.worst_grade.value} "
            f"({worst.label} G {worst.genant_index:.2f}); {fractured} of {len(ct.vertebrae)} "
            "vertebrae mild or worse; vertebrae numbered from the top, level not established "
            "(the field of view does not fix the count); heights in mm measured in 3D."
        )
        head += characterisation_text(ct)
    else:
        head = f"CT not analysed for vertebral fractures: {ct.reason}: {ct.message}."
    others = [
        f"{s.series_instance_uid} ({s.series_number}): {'; '.join(s.reasons)}"
        for s in ct.series
        if not s.chosen
    ]
    if others:
        head += " Series not analysed: " + " | ".join(others)
    return ascii_text(head)[:10240]


def characterisation_text(ct: CtAnalysis) -> str:
    """Return the benign / malignant part of the CT note (empty when it did not run).

    Parameters
    ----------
    ct : CtAnalysis
        The analysis.

    Returns
    -------
    str
        E.g. ``" Characterisation (Li et al. 2021, decision support): #6 malignant 0.91
        (threshold 0.50, 5 sagittal slices). Its model was trained on <the bundle's
        words>."`` or ``" Characterisation not applicable: no
        vertebra at or above the trigger grade (mild)."``.
    """
    if ct.characterisation_status is None:
        return ""
    calls = [
        f"{v.finding.label} {c.label} {c.probability:.2f} (threshold {c.threshold:.2f}, "
        f"{len(c.slice_probabilities)} sagittal slices)"
        for v in ct.characterised
        if (c := v.characterisation) is not None
    ]
    text = ""
    if calls:
        text = " Characterisation (Li et al. 2021, decision support): " + "; ".join(calls) + "."
        if ct.characteriser_trained_on:
            text += f" Its model was trained on {ct.characteriser_trained_on}."
    if ct.characterisation_note:
        text += f" Characterisation {ct.characterisation_note}."
    return text


def _summary(
    result: StudyResult,
    ct: CtAnalysis,
    series_source: Dataset | None,
    root: str,
    algorithm: AlgorithmIdentification | None,
) -> MeasurementsAndQualitativeEvaluations:
    prov = result.provenance
    uid = output_uid(
        root,
        "tracking",
        OUTPUT_FORMAT_VERSION,
        result.study_instance_uid,
        ct.series_instance_uid or "",
        "ct-vertebral-analysis",
        prov.bundle_name,
        prov.bundle_version,
        prov.weights_digest,
    )
    evaluations = [
        QualitativeEvaluation(
            name=codes.VERTEBRAL_STATUS, value=codes.CT_STATUS_CODES[status_key(ct)]
        )
    ]
    measurements = []
    if ct.analysed:
        measurements = [
            Measurement(name=f.name, value=f.value, unit=f.unit, derivation=f.derivation)
            for f in summary_figures(ct.on_reformat())
        ]
        evaluations += [
            QualitativeEvaluation(
                name=codes.WORST_GENANT_GRADE, value=codes.GRADE_CODES[ct.worst_grade.value]
            ),
            QualitativeEvaluation(
                name=codes.LEVEL_RULE, value=codes.LEVEL_RULE_CODES[ct.level_rule.value]
            ),
        ]
        if ct.characterisation_status is not None:
            evaluations.append(
                QualitativeEvaluation(
                    name=codes.CHARACTERISATION_STATUS,
                    value=codes.CHARACTERISATION_STATUS_CODES[ct.characterisation_status.value],
                )
            )
        calls = [v.characterisation for v in ct.characterised if v.characterisation]
        if calls:
            study = "malignant" if any(c.malignant for c in calls) else "benign"
            evaluations.append(
                QualitativeEvaluation(
                    name=codes.FRACTURE_CHARACTERISATION,
                    value=codes.CHARACTERISATION_CODES[study],
                )
            )
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=uid, identifier=SUMMARY_ID),
        finding_type=codes.CT_VERTEBRAL_ANALYSIS,
        algorithm_id=algorithm,
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
        source_images=None
        if series_source is None
        else [SourceImageForMeasurementGroup.from_source_image(series_source)],
    )


def _vertebra(
    tracking: VertebraTracking,
    vertebra: CtVertebraFinding,
    frame_of_reference_uid: str,
    algorithm: AlgorithmIdentification | None,
) -> MeasurementsAndQualitativeEvaluations:
    finding = vertebra.finding
    points = np.asarray(vertebra.keypoints_lps, dtype=np.float64).reshape(6, 3)
    outline = points[list(OUTLINE_ORDER)]

    def located(data: np.ndarray) -> list[CoordinatesForMeasurement3D]:
        return [
            CoordinatesForMeasurement3D(
                graphic_type=GraphicTypeValues3D.POLYLINE,
                graphic_data=data,
                frame_of_reference_uid=frame_of_reference_uid,
            )
        ]

    on_outline = [
        Measurement(name=name, value=value, unit=unit, referenced_coordinates=located(outline))
        for name, value, unit in (
            (codes.GENANT_INDEX, finding.genant_index, codes.RATIO_UNIT),
            (codes.DETECTION_SCORE, finding.score, codes.NO_UNITS),
        )
    ]
    assert finding.heights_mm is not None
    heights = [
        Measurement(
            name=codes.HEIGHT,
            value=value,
            unit=codes.MILLIMETRE,
            method=codes.HEIGHTS_IN_3D,
            finding_sites=[
                FindingSite(
                    anatomic_location=codes.VERTEBRA,
                    topographical_modifier=codes.HEIGHT_SITE_MODIFIERS[name],
                )
            ],
            referenced_coordinates=located(points[[top, bottom]]),
        )
        for name, value, (top, bottom) in zip(
            HEIGHT_NAMES, finding.heights_mm, HEIGHT_PAIRS, strict=True
        )
    ]
    evaluations = [
        QualitativeEvaluation(
            name=codes.GENANT_GRADE, value=codes.GRADE_CODES[finding.grade.value]
        ),
        QualitativeEvaluation(
            name=codes.DEFORMITY, value=codes.DEFORMITY_CODES[finding.deformity.value]
        ),
    ]
    characterisation = []
    call = vertebra.characterisation
    if call is not None:
        evaluations.append(
            QualitativeEvaluation(
                name=codes.FRACTURE_CHARACTERISATION, value=codes.CHARACTERISATION_CODES[call.label]
            )
        )
        characterisation = [
            Measurement(
                name=codes.MALIGNANCY_PROBABILITY,
                value=call.probability,
                unit=codes.PROBABILITY_UNIT,
                derivation=codes.MAXIMUM,
                referenced_coordinates=located(outline),
            ),
            Measurement(
                name=codes.DECISION_THRESHOLD, value=call.threshold, unit=codes.PROBABILITY_UNIT
            ),
            Measurement(
                name=codes.SLICES_SCORED,
                value=len(call.slice_probabilities),
                unit=codes.NO_UNITS,
            ),
        ]
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=tracking.uid, identifier=tracking.identifier),
        finding_type=codes.VERTEBRA,
        algorithm_id=algorithm,
        measurements=[*on_outline, *heights, *characterisation],
        qualitative_evaluations=evaluations,
    )
