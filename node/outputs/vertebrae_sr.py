"""The vertebral fracture analysis in the study's TID 1500 SR (same document as the lesions).

`vertebral_groups` returns the measurement groups `spinexr.node.outputs.sr.build_sr` adds
after the lesion boxes, and `vertebral_notes` the TEXT items it adds to the ``Qualitative
Evaluations`` container. Codes: `spinexr.node.outputs.codes` (section "vertebrae").

Per image with a vertebral analysis (`ImageResult.vertebrae` not None), in image order, groups
whose every number is located on the image:

- the summary, a pair as `spinexr.node.outputs.located` writes it (a TID 1410 planar ROI
  group holding the region, then a TID 1501 group with the same tracking identifier and UID
  holding the figures, each ``INFERRED FROM`` the region): finding type ``Vertebral
  fracture analysis``, tracking identifier ``"image N vertebral fracture analysis"``, region
  = the rectangle around the vertebrae found, or the whole image when none was
  (`column_region`), the TID 1501 group referencing the image;
  ``Vertebral fracture analysis status`` (analysed, or why not: not a lateral view, no
  vertebrae found, image too small, no keypoint model, failed). Only an analysed
  image has more: the lowest Genant index (derivation ``Minimum``), the number of vertebrae
  at each grade, the worst grade, the level rule (counted up from the sacrum, or numbered
  from the top with the level not established), the spacing basis and, when it divided
  Imager Pixel Spacing, the estimated radiographic magnification factor. An image not
  analysed never carries a grade.
- per vertebra (top to bottom), one TID 1501 group: tracking identifier and UID
  (`spinexr.node.outputs.vertebrae_tracking`; the GSPS uses the same), finding type SCT
  ``Vertebra`` (SCT "Vertebral body" is not in pydicom's dictionary), finding site = the CID
  7603 level code when the level is established (T1-T12, L1-L5; no finding site otherwise,
  or for a level outside that table), the source image; ``Genant index`` (UCUM
  ``{ratio}``) and ``Detection confidence score``, each INFERRED FROM the vertebral body's
  outline (closed SCOORD POLYLINE through the six keypoints); with a pixel spacing, three
  ``Height`` (DCM 121207) measurements in ``mm``, told apart by their finding site's
  topographical modifier (SCT Anterior, NCIt Middle, SCT Posterior, CID 212) on the level
  code (SCT ``Vertebra`` when the level is not established), each INFERRED FROM its own
  SCOORD POLYLINE of two points (top and bottom keypoint); qualitative evaluations ``Genant
  grade`` (SCT Normal / Mild / Moderate / Severe), ``Vertebral deformity type`` (project
  codes none / wedge / biconcave / crush) and ``Pixel spacing used for heights``. One group,
  not a planar ROI pair: a viewer that draws the SCOORDs under a group's NUMs (OHIF) draws
  the outline and the three height lines with one label; without a pixel spacing there are
  no heights, the spacing evaluation is ``No pixel spacing`` and a note says so.

Grades use SCT qualifiers rather than RadElement RDES150: their codes are in pydicom's
dictionary and read as Genant's terms under the concept name ``Genant grade``.

Every group carries TID 4019 Algorithm Identification of the keypoint model
(`keypoint_algorithm`: name and version from `VertebralAnalysis.model`, the Genant cut-offs
when given, the level rule, the spacing basis and the view decision as parameters).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from highdicom.sr import (
    AlgorithmIdentification,
    CoordinatesForMeasurement,
    FindingSite,
    GraphicTypeValues,
    Measurement,
    MeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from spinexr.node.outputs import codes
from spinexr.node.outputs.located import (
    Figure,
    Group,
    inferred_from,
    located_groups,
    whole_image,
)
from spinexr.node.outputs.provenance import OUTPUT_FORMAT_VERSION, output_uid
from spinexr.node.outputs.source import ascii_text
from spinexr.node.outputs.vertebrae_tracking import (
    VertebraTracking,
    height_lines,
    outline,
    vertebra_trackings,
)
from spinexr.pipeline.results import ImageResult, StudyResult
from spinexr.pipeline.spacing import SpacingBasis
from spinexr.pipeline.vertebrae.findings import LevelRule, VertebraFinding, VertebralAnalysis
from spinexr.pipeline.vertebrae.genant import HEIGHT_NAMES, GenantGrade

logger = logging.getLogger(__name__)


def vertebral_groups(
    result: StudyResult,
    sources: Mapping[str, Dataset],
    root: str,
) -> list[Group]:
    """Return the SR measurement groups of a study's vertebral fracture analysis.

    Parameters
    ----------
    result : StudyResult
        The analysis; images whose ``vertebrae`` is None add nothing.
    sources : mapping of str to pydicom.dataset.Dataset
        Source image headers by SOP Instance UID (every image of the result).
    root : str
        UID root (tracking UIDs).

    Returns
    -------
    list of highdicom groups
        Per image: the summary pair, then per vertebra its pair (planar ROI group of the
        outline, TID 1501 group of its figures; `spinexr.node.outputs.located`).
    """
    trackings = vertebra_trackings(result, root)
    groups: list[Group] = []
    for number, image in enumerate(result.images, start=1):
        analysis = image.vertebrae
        if analysis is None:
            continue
        source = sources[image.sop_instance_uid]
        algorithm = keypoint_algorithm(analysis, result)
        groups += summary_group(image, number, source, result, root, algorithm)
        for tracking in trackings:
            if tracking.sop_instance_uid == image.sop_instance_uid:
                groups += vertebra_group(tracking, analysis, source, algorithm)
    return groups


def vertebral_notes(result: StudyResult) -> list[TextContentItem]:
    """Return the ``Vertebral fracture analysis note`` TEXT items (one per image analysed or not).

    Parameters
    ----------
    result : StudyResult
        The analysis.

    Returns
    -------
    list of highdicom.sr.TextContentItem
        CONTAINS items for the ``Qualitative Evaluations`` container (ASCII).
    """
    return [
        TextContentItem(
            name=codes.VERTEBRAL_NOTE,
            value=note_text(image, number),
            relationship_type=RelationshipTypeValues.CONTAINS,
        )
        for number, image in enumerate(result.images, start=1)
        if image.vertebrae is not None
    ]


def note_text(image: ImageResult, number: int) -> str:
    """Return what an image's vertebral analysis concluded, in words.

    Parameters
    ----------
    image : ImageResult
        The image (``vertebrae`` set).
    number : int
        Its 1-based position in the result.

    Returns
    -------
    str
        E.g. ``"image 2 (<uid>): worst Genant grade moderate (L1 G 0.68); 1 of 5 vertebrae
        mild or worse; levels counted up from the sacrum; heights in mm from PixelSpacing."``
        or ``"image 1 (<uid>) not analysed for vertebral fractures: not_lateral: <reason>"``.
    """
    analysis = image.vertebrae
    assert analysis is not None
    head = f"image {number} ({image.sop_instance_uid})"
    if not analysis.analysed:
        return ascii_text(
            f"{head} not analysed for vertebral fractures: "
            f"{analysis.status.value}: {analysis.reason}"
        )
    worst = min(analysis.vertebrae, key=lambda v: v.genant_index)
    fractured = sum(1 for v in analysis.vertebrae if v.fractured)
    levels = (
        "levels counted up from the sacrum"
        if analysis.level_rule is LevelRule.SACRUM
        else "levels not established (numbered from the top)"
    )
    if analysis.spacing_basis is SpacingBasis.NONE:
        spacing = (
            "pixel spacing absent: no heights in mm, Genant index and grades from pixel ratios"
        )
    else:
        spacing = f"heights in mm from {codes.SPACING_CODES[spacing_key(analysis)].meaning}"
    text = (
        f"{head}: worst Genant grade {analysis.worst_grade.value} "
        f"({worst.label} G {worst.genant_index:.2f}); {fractured} of "
        f"{len(analysis.vertebrae)} vertebrae mild or worse; {levels}; {spacing}."
    )
    if analysis.reason:
        text += f" {analysis.reason}"
    return ascii_text(text)


# ----------------------------------------------------------------------------- groups


def summary_group(
    image: ImageResult,
    number: int,
    source: Dataset,
    result: StudyResult,
    root: str,
    algorithm: AlgorithmIdentification | None,
) -> list[Group]:
    """Return the groups summarising one image's vertebral analysis, located on the image.

    Parameters
    ----------
    image : ImageResult
        The image (``vertebrae`` set).
    number : int
        Its 1-based position in the result.
    source : pydicom.dataset.Dataset
        Its header.
    result : StudyResult
        The study (tracking UID).
    root : str
        UID root.
    algorithm : highdicom.sr.AlgorithmIdentification or None
        The keypoint model.

    Returns
    -------
    list
        The planar ROI group (`column_region`) and the TID 1501 group: status for every
        image; counts, lowest G, worst grade, level rule and spacing only for an analysed one.
    """
    analysis = image.vertebrae
    assert analysis is not None
    prov = result.provenance
    uid = output_uid(
        root,
        "tracking",
        OUTPUT_FORMAT_VERSION,
        result.study_instance_uid,
        image.sop_instance_uid,
        "vertebral-analysis",
        prov.bundle_name,
        prov.bundle_version,
        prov.weights_digest,
    )
    evaluations = [
        QualitativeEvaluation(
            name=codes.VERTEBRAL_STATUS, value=codes.STATUS_CODES[analysis.status.value]
        )
    ]
    figures: list[Figure] = []
    if analysis.analysed:
        figures = summary_figures(analysis)
        evaluations += [
            QualitativeEvaluation(
                name=codes.WORST_GENANT_GRADE, value=codes.GRADE_CODES[analysis.worst_grade.value]
            ),
            QualitativeEvaluation(
                name=codes.LEVEL_RULE, value=codes.LEVEL_RULE_CODES[analysis.level_rule.value]
            ),
            _spacing_evaluation(analysis),
        ]
    return located_groups(
        tracking_uid=uid,
        tracking_id=f"image {number} vertebral fracture analysis",
        region=column_region(analysis, source),
        source=source,
        finding=codes.VERTEBRAL_ANALYSIS,
        algorithm=algorithm,
        figures=figures,
        evaluations=evaluations,
    )


def vertebra_group(
    tracking: VertebraTracking,
    analysis: VertebralAnalysis,
    source: Dataset,
    algorithm: AlgorithmIdentification | None,
) -> list[Group]:
    """Return the TID 1501 group of one vertebra, every number located by its own SCOORD.

    Parameters
    ----------
    tracking : VertebraTracking
        The vertebra and its tracking identifier and UID.
    analysis : VertebralAnalysis
        Its image's analysis (spacing basis).
    source : pydicom.dataset.Dataset
        The source image's header.
    algorithm : highdicom.sr.AlgorithmIdentification or None
        The keypoint model.

    Returns
    -------
    list
        One group: Genant index and detection score ``INFERRED FROM`` the body's outline,
        then (with a pixel spacing) the three heights in mm each ``INFERRED FROM`` its line;
        level as finding site; grade, deformity and spacing basis as evaluations.
    """
    vertebra = tracking.vertebra
    site = level_code(vertebra.level)
    region = outline(vertebra, int(source.Rows), int(source.Columns))
    on_outline = inferred_from(
        [
            Figure(codes.GENANT_INDEX, vertebra.genant_index, codes.RATIO_UNIT),
            Figure(codes.DETECTION_SCORE, vertebra.score, codes.NO_UNITS),
        ],
        region,
        source,
    )
    heights = (
        []
        if vertebra.heights_mm is None
        else _height_measurements(vertebra, source, site or codes.VERTEBRA)
    )
    return [
        MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(
                uid=tracking.uid, identifier=tracking.identifier
            ),
            finding_type=codes.VERTEBRA,
            finding_sites=None if site is None else [FindingSite(anatomic_location=site)],
            algorithm_id=algorithm,
            measurements=[*on_outline, *heights],
            qualitative_evaluations=[
                QualitativeEvaluation(
                    name=codes.GENANT_GRADE, value=codes.GRADE_CODES[vertebra.grade.value]
                ),
                QualitativeEvaluation(
                    name=codes.DEFORMITY, value=codes.DEFORMITY_CODES[vertebra.deformity.value]
                ),
                _spacing_evaluation(analysis),
            ],
            source_images=[SourceImageForMeasurementGroup.from_source_image(source)],
        )
    ]


def column_region(analysis: VertebralAnalysis, source: Dataset) -> npt.NDArray[np.float64]:
    """Return where an image's vertebral summary is drawn.

    Parameters
    ----------
    analysis : VertebralAnalysis
        The image's analysis.
    source : pydicom.dataset.Dataset
        Its header.

    Returns
    -------
    numpy.ndarray
        The closed rectangle around every vertebra found, ``COLUMN_MARGIN`` of the image's
        larger side wider on every side (clipped to the image), so that viewers place the
        summary's label by the column rather than on the image's abnormality frame; the
        whole image when no vertebra was found.
    """
    rows, columns = int(source.Rows), int(source.Columns)
    if not analysis.vertebrae:
        return whole_image(source)
    points = np.concatenate([outline(v, rows, columns) for v in analysis.vertebrae])
    margin = COLUMN_MARGIN * max(rows, columns)
    (x0, y0), (x1, y1) = points.min(axis=0) - margin, points.max(axis=0) + margin
    x0, x1 = max(x0, 0.0), min(x1, float(columns))
    y0, y1 = max(y0, 0.0), min(y1, float(rows))
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float64)


COLUMN_MARGIN = 0.02
"""Margin of the vertebral summary's rectangle, as a share of the image's larger side."""


# ----------------------------------------------------------------------------- items


def keypoint_algorithm(
    analysis: VertebralAnalysis, result: StudyResult
) -> AlgorithmIdentification | None:
    """Return the TID 4019 identification of the keypoint model (None without a model).

    Parameters
    ----------
    analysis : VertebralAnalysis
        The image's analysis; ``model`` is ``"<name> <version>"`` (a name without a space
        is given the bundle's version).
    result : StudyResult
        The study (bundle version).

    Returns
    -------
    highdicom.sr.AlgorithmIdentification or None
        Name, version, parameters (the cut-offs the grades were given with, level rule,
        spacing basis, view decision).
    """
    model = analysis.model.strip()
    if not model:
        return None
    name, _, version = model.rpartition(" ")
    if not name:
        name, version = model, result.provenance.bundle_version
    mild, moderate, severe = analysis.cutoffs
    parameters = [
        f"genant_cutoffs=mild<={mild:g},moderate<={moderate:g},severe<={severe:g}",
        f"level_rule={analysis.level_rule.value}",
        f"spacing={spacing_key(analysis)}",
        f"view={analysis.view} ({analysis.view_source.value})",
    ]
    return AlgorithmIdentification(name=name[:64], version=version[:64], parameters=parameters)


def level_code(level: str | None) -> Code | None:
    """Return the CID 7603 code of a level name (None when not established or unknown).

    Parameters
    ----------
    level : str or None
        ``"T1"`` … ``"T12"``, ``"L1"`` … ``"L5"``.

    Returns
    -------
    pydicom.sr.coding.Code or None
        The SCT code; None for None or a level outside `codes.VERTEBRA_LEVELS` (logged).
    """
    if level is None:
        return None
    code = codes.VERTEBRA_LEVELS.get(level)
    if code is None:
        logger.warning("no CID 7603 code for level %r: the SR gives it no finding site", level)
    return code


def spacing_key(analysis: VertebralAnalysis) -> str:
    """Return the `codes.SPACING_CODES` key of an analysis's spacing basis.

    Parameters
    ----------
    analysis : VertebralAnalysis
        The analysis.

    Returns
    -------
    str
        ``"PixelSpacing"``, ``"ImagerPixelSpacing/magnification"`` (divided by
        EstimatedRadiographicMagnificationFactor), ``"ImagerPixelSpacing"`` or ``"none"``.
    """
    basis = analysis.spacing_basis
    if basis is SpacingBasis.IMAGER_PIXEL_SPACING and analysis.magnification_factor is not None:
        return "ImagerPixelSpacing/magnification"
    return basis.value


def _spacing_evaluation(analysis: VertebralAnalysis) -> QualitativeEvaluation:
    return QualitativeEvaluation(
        name=codes.SPACING_BASIS, value=codes.SPACING_CODES[spacing_key(analysis)]
    )


def summary_figures(analysis: VertebralAnalysis) -> list[Figure]:
    """Return an analysed image's summary numbers: lowest G, count per grade, magnification.

    Parameters
    ----------
    analysis : VertebralAnalysis
        An analysed image (or CT reformat).

    Returns
    -------
    list of Figure
        Lowest Genant index (derivation ``Minimum``), the number of vertebrae at each grade
        and, when it divided Imager Pixel Spacing, the magnification factor.
    """
    lowest = analysis.lowest_genant
    assert lowest is not None
    counts = analysis.grade_counts()
    out = [
        Figure(codes.GENANT_INDEX, lowest, codes.RATIO_UNIT, derivation=codes.MINIMUM),
        *(
            Figure(codes.VERTEBRAE_AT_GRADE[grade.value], counts[grade], codes.NO_UNITS)
            for grade in GenantGrade
        ),
    ]
    if spacing_key(analysis) == "ImagerPixelSpacing/magnification":
        assert analysis.magnification_factor is not None
        factor = analysis.magnification_factor
        out.append(Figure(codes.MAGNIFICATION_FACTOR, factor, codes.NO_UNITS))
    return out


def _height_measurements(
    vertebra: VertebraFinding, source: Dataset, site: Code
) -> list[Measurement]:
    assert vertebra.heights_mm is not None
    lines = height_lines(vertebra, int(source.Rows), int(source.Columns))
    return [
        Measurement(
            name=codes.HEIGHT,
            value=value,
            unit=codes.MILLIMETRE,
            finding_sites=[
                FindingSite(
                    anatomic_location=site,
                    topographical_modifier=codes.HEIGHT_SITE_MODIFIERS[name],
                )
            ],
            referenced_coordinates=[
                CoordinatesForMeasurement(
                    graphic_type=GraphicTypeValues.POLYLINE,
                    graphic_data=line,
                    source_image=SourceImageForRegion.from_source_image(source),
                )
            ],
        )
        for name, value, line in zip(HEIGHT_NAMES, vertebra.heights_mm, lines, strict=True)
    ]
