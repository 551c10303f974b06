"""The study's Comprehensive SR: a TID 1500 Measurement Report of the AI analysis.

Content tree (root ``(126000, DCM, "Imaging Measurement Report")``):

- language, device observer (Device UID, name, manufacturer, model = bundle, serial number),
  procedure reported ``(363679005, SCT, "Imaging procedure")`` (CID 100), image library of the
  source images when highdicom can describe them (TID 1600 is optional);
- ``Imaging Measurements``, every result located on an image as a pair of groups sharing a
  tracking identifier and UID: a TID 1410 planar ROI group (the region) and a TID 1501 group
  whose measurements are ``INFERRED FROM`` a copy of the region
  (`spinexr.node.outputs.located`; this is what lets OHIF show and list them,
  ``docs/viewers.md``):

  - ``"study abnormality"``: region = the whole image whose probability is the study's;
    abnormality probability (derivation ``Maximum`` over the images), decision threshold
    c*, ``Abnormal at decision threshold`` Yes/No — only the finding when the study failed;
  - one ``"image N abnormality"`` per analysed image, region = the whole image (the TID 1501
    group also references it as source image): probability, c*, decision;
  - one per displayed box: tracking identifier ``"box K <class>"`` and tracking UID (the
    GSPS uses the same, see `spinexr.node.outputs.provenance.box_trackings`), finding code
    of the class, a closed 5-point SCOORD POLYLINE in the source image's pixel space
    referencing the source image, geometric purpose ``Bounded by``; detection score;

- ``Qualitative Evaluations`` (TID 1500 row 12): the outcome coded from CID 6047
  (``All algorithms succeeded; with/without findings``, ``No algorithms succeeded``, or
  ``Not all algorithms succeeded; ...`` when some images failed) and a ``Summary`` text that
  says it in words (``"No abnormal finding ..."``, ``"Analysis failed: <reason>"``), plus one
  ``Analysis failed`` text per image that could not be analysed.

The vertebral fracture analysis adds its groups after the boxes and one note per image to
``Qualitative Evaluations`` (`spinexr.node.outputs.vertebrae_sr`).

Every measurement group carries TID 4019 Algorithm Identification (bundle name and version;
fusion mode and thresholds as parameters). The private codes are declared in the Coding Scheme
Identification Sequence. A superseded SR goes into the Predecessor Documents Sequence.

Validation: dciodvfy reports no errors (only warnings that it does not know ``99SPINEXR``).
pixelmed's DicomSRValidator (20220618) reports no errors except one known limitation: with
exactly one planar ROI group it checks the TID 1501 groups against TID 1410 ("Missing
conditional content item" for rows 5 and 7); it also warns that TID 1501 qualitative
evaluations and, with several boxes, TID 1410's geometric purpose are "not in template".
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    Comprehensive3DSR,
    ComprehensiveSR,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    ImageLibrary,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    RelationshipTypeValues,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.sr.coding import Code

from spinexr.node.outputs import codes
from spinexr.node.outputs.boxes import closed_rectangle
from spinexr.node.outputs.ct_sr import ct_groups, ct_notes, ct_outcome_text, has_3d_content
from spinexr.node.outputs.located import Figure, Group, located_groups, whole_image
from spinexr.node.outputs.provenance import (
    DEMO_WARNING,
    OUTPUT_FORMAT_VERSION,
    SERIES_NUMBERS,
    BoxTracking,
    apply_equipment,
    box_trackings,
    contributing_equipment,
    equipment,
    output_uid,
    series_description,
)
from spinexr.node.outputs.source import ascii_text
from spinexr.node.outputs.vertebrae_sr import vertebral_groups, vertebral_notes
from spinexr.node.settings import Settings
from spinexr.node.sopclasses import COMPREHENSIVE_SR
from spinexr.pipeline.ct.series import CT_SOP_CLASSES
from spinexr.pipeline.errors import ImageRefusal
from spinexr.pipeline.results import ImageResult, Outcome, StudyResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SupersededReport:
    """An SR this one replaces (Predecessor Documents Sequence).

    Attributes
    ----------
    study_instance_uid, series_instance_uid, sop_instance_uid : str
        Where the superseded SR is.
    sop_class_uid : str
        Its SOP Class (Comprehensive SR by default).
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str = str(COMPREHENSIVE_SR)


def build_sr(
    sources: Sequence[Dataset],
    result: StudyResult,
    settings: Settings,
    *,
    series_uid: str,
    sop_uid: str,
    predecessor: SupersededReport | None = None,
    instance_number: int = 1,
) -> ComprehensiveSR | Comprehensive3DSR:
    """Build the Comprehensive SR (TID 1500) reporting a study's analysis.

    Parameters
    ----------
    sources : sequence of pydicom.dataset.Dataset
        The study's source images (headers suffice); every image the result mentions must
        be among them. Patient and study modules are copied from the first.
    result : StudyResult
        The analysis (any outcome, FAILED included).
    settings : Settings
        ``node.uid_root`` (tracking UIDs), ``node.name`` (device observer name),
        ``output.series_description_prefix``.
    series_uid, sop_uid : str
        Series and SOP Instance UIDs of the SR.
    predecessor : SupersededReport, optional
        The SR this one supersedes.
    instance_number : int
        Instance Number.

    Returns
    -------
    highdicom.sr.ComprehensiveSR
        The document (COMPLETE, UNVERIFIED, PRELIMINARY).

    Raises
    ------
    ValueError
        If there are no sources, they belong to another study, or an image of the result
        is not among them.

    References
    ----------
    PS3.16 TID 1500 Measurement Report, TID 1501, TID 1410, TID 4019; PS3.3 A.35.3
    Comprehensive SR IOD.
    """
    by_uid = _sources_by_uid(sources, result)
    root = settings.node.uid_root
    prov = result.provenance
    facts = equipment(prov)
    algorithm = AlgorithmIdentification(
        name=prov.bundle_name,
        version=prov.bundle_version,
        parameters=[
            f"fusion={result.fusion_mode.value}",
            f"threshold={result.threshold:.6g}",
            f"display_threshold={result.display_threshold:.6g}",
            *([f"spine_check={prov.spine_check.value}"] if prov.spine_check else []),
        ],
    )
    # A CT study without radiographs has no radiograph abnormality to report.
    radiographs = bool(result.images) or result.ct is None
    groups: list[Group] = _study_group(result, by_uid, root, algorithm) if radiographs else []
    for number, image in enumerate(result.images, start=1):
        if not image.failed:
            groups += _image_group(image, number, by_uid, result, root, algorithm)
    for tracking in box_trackings(result, root):
        groups += _box_group(tracking, by_uid[tracking.sop_instance_uid], algorithm)
    groups.extend(vertebral_groups(result, by_uid, root))
    groups.extend(ct_groups(result, by_uid, root))

    observer = ObserverContext(
        observer_type=dcm_codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=facts.device_uid,
            name=settings.node.name[:64],
            manufacturer_name=facts.manufacturer,
            model_name=facts.model_name,
            serial_number=facts.device_serial_number,
        ),
    )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=codes.PROCEDURE_REPORTED,
        imaging_measurements=groups,
        title=codes.REPORT_TITLE,
        referenced_images=_library_images(
            [ds for ds in sources if str(ds.get("SOPClassUID", "")) not in CT_SOP_CLASSES]
        ),
    )
    report[0].ContentSequence.append(_qualitative_evaluations(result))

    previous = None if predecessor is None else [_predecessor_dataset(predecessor)]
    document = Comprehensive3DSR if has_3d_content(result) else ComprehensiveSR
    sr = document(
        evidence=list(sources),
        content=report[0],
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBERS["sr"],
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer=facts.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        previous_versions=previous,
        contributing_equipment=[contributing_equipment(result)],
        coding_schemes=codes.coding_scheme_identification(),
        series_description=series_description(settings, prov, "sr"),
        manufacturer_model_name=facts.model_name,
        software_versions=list(facts.software_versions),
        device_serial_number=facts.device_serial_number,
    )
    apply_equipment(sr, result)
    logger.debug("built SR %s for study %s", sop_uid, result.study_instance_uid)
    return sr


# ----------------------------------------------------------------------------- groups


def _study_group(
    result: StudyResult,
    by_uid: dict[str, Dataset],
    root: str,
    algorithm: AlgorithmIdentification,
) -> list[Group]:
    tracking_uid = _group_uid(root, result, "study")
    figures: list[Figure] = []
    evaluations: list[QualitativeEvaluation] = []
    if result.probability is not None and result.decision is not None:
        figures = [
            Figure(
                codes.ABNORMALITY_PROBABILITY,
                result.probability,
                codes.PROBABILITY_UNIT,
                derivation=codes.MAXIMUM,
            ),
            Figure(codes.DECISION_THRESHOLD, result.threshold, codes.PROBABILITY_UNIT),
        ]
        evaluations = [_decision(result.decision)]
    candidates = [by_uid[_study_image(result)]] if result.images else []
    source = next((ds for ds in [*candidates, *by_uid.values()] if _has_size(ds)), None)
    if source is None:
        # Nothing to draw it on (a failed study none of whose images has a size): unlocated,
        # the one group of the node's SRs OHIF cannot open (docs/viewers.md).
        return [
            MeasurementsAndQualitativeEvaluations(
                tracking_identifier=TrackingIdentifier(
                    uid=tracking_uid, identifier="study abnormality"
                ),
                finding_type=codes.SPINE_RADIOGRAPH_ABNORMALITY,
                algorithm_id=algorithm,
                qualitative_evaluations=evaluations or None,
            )
        ]
    return located_groups(
        tracking_uid=tracking_uid,
        tracking_id="study abnormality",
        region=whole_image(source),
        source=source,
        finding=codes.SPINE_RADIOGRAPH_ABNORMALITY,
        algorithm=algorithm,
        figures=figures,
        evaluations=evaluations,
        image_group=False,
    )


def _has_size(source: Dataset) -> bool:
    try:
        return int(source.Rows) > 0 and int(source.Columns) > 0
    except (AttributeError, TypeError, ValueError):
        return False


def _study_image(result: StudyResult) -> str:
    """Return the image the study's result is drawn on.

    The one whose probability is the study's (the maximum), else the first image.
    """
    for image in result.images:
        if image.probability is not None and image.probability == result.probability:
            return image.sop_instance_uid
    return result.images[0].sop_instance_uid


def _image_group(
    image: ImageResult,
    number: int,
    by_uid: dict[str, Dataset],
    result: StudyResult,
    root: str,
    algorithm: AlgorithmIdentification,
) -> list[Group]:
    source = by_uid[image.sop_instance_uid]
    assert image.probability is not None and image.decision is not None
    return located_groups(
        tracking_uid=_group_uid(root, result, image.sop_instance_uid),
        tracking_id=f"image {number} abnormality",
        region=whole_image(source),
        source=source,
        finding=codes.SPINE_RADIOGRAPH_ABNORMALITY,
        algorithm=algorithm,
        figures=[
            Figure(codes.ABNORMALITY_PROBABILITY, image.probability, codes.PROBABILITY_UNIT),
            Figure(codes.DECISION_THRESHOLD, result.threshold, codes.PROBABILITY_UNIT),
        ],
        evaluations=[_decision(image.decision)],
    )


def _box_group(
    tracking: BoxTracking, source: Dataset, algorithm: AlgorithmIdentification
) -> list[Group]:
    return located_groups(
        tracking_uid=tracking.uid,
        tracking_id=tracking.identifier,
        region=closed_rectangle(tracking.box, int(source.Rows), int(source.Columns)),
        source=source,
        finding=codes.finding_code(tracking.box.label),
        algorithm=algorithm,
        figures=[Figure(codes.DETECTION_SCORE, tracking.box.score, codes.NO_UNITS)],
        geometric_purpose=codes.BOUNDED_BY,
    )


def _decision(positive: bool) -> QualitativeEvaluation:
    return QualitativeEvaluation(
        name=codes.ABNORMAL_DECISION, value=codes.YES if positive else codes.NO
    )


def _group_uid(root: str, result: StudyResult, what: str) -> str:
    prov = result.provenance
    return output_uid(
        root,
        "tracking",
        OUTPUT_FORMAT_VERSION,
        result.study_instance_uid,
        what,
        prov.bundle_name,
        prov.bundle_version,
        prov.weights_digest,
    )


# ----------------------------------------------------------------------------- outcome


def outcome_code(result: StudyResult) -> Code:
    """Return the CID 6047 code summarising a study's outcome.

    Parameters
    ----------
    result : StudyResult
        The analysis.

    Returns
    -------
    pydicom.sr.coding.Code
        ``with findings`` for ABNORMAL, ``without findings`` for NO_FINDING (the
        ``Not all algorithms succeeded`` variants when some image failed), ``No algorithms
        succeeded`` for FAILED.
    """
    if result.outcome is Outcome.FAILED:
        return codes.OUTCOME_FAILED
    partial = any(im.failed for im in result.images)
    if result.outcome is Outcome.ABNORMAL:
        return codes.PARTIAL_WITH_FINDINGS if partial else codes.OUTCOME_WITH_FINDINGS
    return codes.PARTIAL_WITHOUT_FINDINGS if partial else codes.NO_ABNORMAL_FINDING


def outcome_text(result: StudyResult) -> str:
    """Return the outcome in words (the SR's ``Summary``; ASCII only).

    Parameters
    ----------
    result : StudyResult
        The analysis.

    Returns
    -------
    str
        E.g. ``"No abnormal finding: probability 0.12 < threshold 0.50; no box displayed."``
        or ``"Analysis failed: <reason>"`` (``"Not analysed: not a spine image"`` when the
        spine check kept every image out), prefixed by the demo warning for a demo bundle.
    """
    prefix = f"{DEMO_WARNING}. " if result.provenance.demo else ""
    not_spine = sum(1 for im in result.images if _not_spine(im))
    if result.outcome is Outcome.FAILED:
        if result.images and not_spine == len(result.images):
            return ascii_text(f"{prefix}Not analysed: not a spine image ({not_spine} image(s)).")
        return ascii_text(f"{prefix}Analysis failed: {result.failure_reason}")
    if result.probability is None:  # a CT study without radiographs
        assert result.ct is not None
        return ascii_text(prefix + ct_outcome_text(result.ct))
    relation = ">=" if result.decision else "<"
    scores = f"probability {result.probability:.2f} {relation} threshold {result.threshold:.2f}"
    counts = Counter(b.label for im in result.images for b in im.displayed_boxes)
    if result.outcome is Outcome.NO_FINDING:
        text = f"No abnormal finding: {scores}; no box displayed."
    else:
        found = ", ".join(f"{c.display_name} ({counts[c]})" for c in sorted(counts))
        text = f"Abnormal: {scores}; " + (f"findings: {found}." if found else "no box displayed.")
    failed = sum(1 for im in result.images if im.failed)
    if failed:
        text += f" {failed} of {len(result.images)} images could not be analysed."
    if not_spine:
        text += f" {not_spine} of them not a spine image."
    if result.ct is not None:
        text += " " + ct_outcome_text(result.ct)
    return ascii_text(prefix + text)


def _not_spine(image: ImageResult) -> bool:
    return image.error is not None and image.error.reason == ImageRefusal.NOT_SPINE


def _qualitative_evaluations(result: StudyResult) -> ContainerContentItem:
    container = ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        relationship_type=RelationshipTypeValues.CONTAINS,
    )
    items = ContentSequence()
    items.append(
        CodeContentItem(
            name=codes.PROCESSING_SUMMARY,
            value=outcome_code(result),
            relationship_type=RelationshipTypeValues.CONTAINS,
        )
    )
    items.append(
        TextContentItem(
            name=codes.SUMMARY,
            value=outcome_text(result),
            relationship_type=RelationshipTypeValues.CONTAINS,
        )
    )
    for number, image in enumerate(result.images, start=1):
        if image.error is not None:
            items.append(
                TextContentItem(
                    name=codes.ANALYSIS_FAILED,
                    value=ascii_text(
                        f"image {number} ({image.sop_instance_uid}) not analysed: "
                        f"{image.error.reason}: {image.error.message}"
                    ),
                    relationship_type=RelationshipTypeValues.CONTAINS,
                )
            )
    items.extend(vertebral_notes(result))
    items.extend(ct_notes(result))
    container.ContentSequence = items
    return container


# ----------------------------------------------------------------------------- helpers


def _sources_by_uid(sources: Sequence[Dataset], result: StudyResult) -> dict[str, Dataset]:
    if not sources:
        raise ValueError("no source images: an SR needs at least one as evidence")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    studies = {str(ds.StudyInstanceUID) for ds in sources}
    if studies != {result.study_instance_uid}:
        raise ValueError(
            f"sources belong to {sorted(studies)}, result to {result.study_instance_uid}"
        )
    missing = [im.sop_instance_uid for im in result.images if im.sop_instance_uid not in by_uid]
    if missing:
        raise ValueError(f"result images not among the sources: {missing}")
    return by_uid


def _library_images(sources: Sequence[Dataset]) -> list[Dataset] | None:
    """Return the sources when highdicom can describe each in an Image Library (TID 1600).

    highdicom's projection-radiography descriptors need Patient Orientation and Imager Pixel
    Spacing; without them the (optional) library is left out rather than invented. CT
    slices are left out of it (the caller's choice): hundreds of entries would describe
    nothing the SR's SCOORD3D need.
    """
    if not sources:
        return None
    try:
        ImageLibrary(list(sources))
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        logger.debug("image library left out: %s", exc)
        return None
    return list(sources)


def _predecessor_dataset(predecessor: SupersededReport) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = predecessor.study_instance_uid
    ds.SeriesInstanceUID = predecessor.series_instance_uid
    ds.SOPInstanceUID = predecessor.sop_instance_uid
    ds.SOPClassUID = predecessor.sop_class_uid
    return ds
