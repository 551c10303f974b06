r"""The CT spine reformat as a derived image, and the GSPS that draws the grades on it.

For a study whose CT was analysed, the node sends the image its keypoint model read: the
straightened mid-sagittal reformat of the chosen series (`spinexr.pipeline.ct.stage.CtReformat`,
bone window, anterior to the left, superior at the top), so that any viewer shows every
vertebra of the column in one picture, even with scoliosis.

- **Secondary Capture** (`build_reformat_sc`): 8-bit MONOCHROME2, Image Type
  ``DERIVED\SECONDARY\REFORMATTED``, Conversion Type WSD, Burned In Annotation NO, the
  series' slices in the Source Image Sequence (Purpose of Reference "Source image for image
  processing operation"), Derivation Description and Image Comments saying that it is an AI
  reformat not for diagnosis without the source, and that heights are measured in 3D in the
  SR. Pixel Spacing is the reformat's, so viewers show the aspect ratio right; the curve is
  straightened, so distances drawn on it are approximate (the SR's heights are not).
- **GSPS** on it (`build_reformat_gsps`): each vertebra's three height lines and its label
  (heights, G, grade) in one layer per Genant grade, coloured by grade, with the tracking
  identifier and UID of the vertebra's SR group (`vertebrae_tracking.ct_vertebra_trackings`),
  and a summary line; exactly the layers a lateral radiograph's GSPS has
  (`spinexr.node.outputs.vertebrae_gsps.analysis_annotations`).

Both are kind ``reformat`` (`Destination.objects`), in two series of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from highdicom import PresentationLUTTransformation
from highdicom.color import CIELabColor
from highdicom.pr import (
    AnnotationUnitsValues,
    GraphicAnnotation,
    GraphicLayer,
    GrayscaleSoftcopyPresentationState,
    TextJustificationValues,
    TextObject,
)
from highdicom.sc import SCImage
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from spinexr.node.outputs.gsps import set_displayed_area_spacing
from spinexr.node.outputs.provenance import (
    DEMO_WARNING,
    NOT_FOR_DIAGNOSIS,
    REFORMAT_GSPS_SERIES_NUMBER,
    SERIES_NUMBERS,
    apply_equipment,
    contributing_equipment,
    equipment,
    series_description,
)
from spinexr.node.outputs.source import ascii_text, copy_body_part
from spinexr.node.outputs.vertebrae_gsps import analysis_annotations, vertebra_label
from spinexr.node.outputs.vertebrae_tracking import ct_vertebra_trackings
from spinexr.node.settings import Settings
from spinexr.pipeline.ct.stage import CtReformat
from spinexr.pipeline.results import StudyResult
from spinexr.pipeline.vertebrae.genant import GenantGrade

logger = logging.getLogger(__name__)

CONTENT_LABEL = "AI_SPINEXR_CT"
"""Content Label of the reformat's presentation state."""

SUMMARY_LAYER = "AI_SUMMARY"

_SOURCE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")


def reformat_summary(result: StudyResult) -> str:
    """Return the one line that says what the CT analysis found.

    Parameters
    ----------
    result : StudyResult
        The analysis (``ct`` analysed).

    Returns
    -------
    str
        E.g. ``"AI spinexr-demo 1.2.0: CT worst Genant grade moderate (#8 G 0.68), 2 of 9
        vertebrae mild or worse"`` (ASCII, at most 1024 characters).
    """
    ct = result.ct
    assert ct is not None and ct.analysed
    prov = result.provenance
    worst = ct.worst_vertebra
    assert worst is not None
    fractured = ct.fractured_count
    grade = ct.worst_grade
    head = f"AI {prov.bundle_name} {prov.bundle_version}: CT"
    if grade is GenantGrade.NORMAL:
        text = f"{head} no vertebral fracture ({len(ct.vertebrae)} vertebrae, lowest G "
        text += f"{worst.genant_index:.2f})"
    else:
        text = (
            f"{head} worst Genant grade {grade.value} ({worst.label} G {worst.genant_index:.2f}), "
            f"{fractured} of {len(ct.vertebrae)} vertebrae mild or worse"
        )
    if prov.demo:
        text += f" - {DEMO_WARNING}"
    return ascii_text(text)[:1024]


def build_reformat_sc(
    ct_headers: Sequence[Dataset],
    reformat: CtReformat,
    result: StudyResult,
    settings: Settings,
    *,
    series_uid: str,
    sop_uid: str,
) -> SCImage:
    """Build the Secondary Capture of the straightened mid-sagittal reformat.

    Parameters
    ----------
    ct_headers : sequence of pydicom.dataset.Dataset
        Headers of the CT series' slices (patient and study modules from the first; every
        one of ``reformat.sop_instance_uids`` found among them is referenced as a source).
    reformat : CtReformat
        The image the keypoint model read.
    result : StudyResult
        The analysis (``ct`` analysed).
    settings : Settings
        ``output.series_description_prefix``.
    series_uid, sop_uid : str
        Series and SOP Instance UIDs.

    Returns
    -------
    highdicom.sc.SCImage
        The derived image.

    Raises
    ------
    ValueError
        When no header of the reformat's series is given.
    """
    mine = [ds for ds in ct_headers if str(ds.SeriesInstanceUID) == reformat.series_instance_uid]
    if not mine:
        raise ValueError(f"no header of CT series {reformat.series_instance_uid}")
    ref = mine[0]
    prov = result.provenance
    facts = equipment(prov)
    row_mm, col_mm = reformat.spacing_mm
    sc = SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=reformat.display,
        photometric_interpretation="MONOCHROME2",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBERS["reformat"],
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=facts.manufacturer,
        pixel_spacing=(row_mm, col_mm),  # type: ignore[arg-type]
        patient_orientation=("P", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[contributing_equipment(result)],
        series_description=series_description(settings, prov, "reformat"),
        manufacturer_model_name=facts.model_name,
        software_versions=list(facts.software_versions),
        device_serial_number=facts.device_serial_number,
    )
    sc.ImageType = ["DERIVED", "SECONDARY", "REFORMATTED"]
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "NO"
    sc.WindowCenter = "128"
    sc.WindowWidth = "256"
    sc.DerivationDescription = ascii_text(
        "AI straightened mid-sagittal reformat of the vertebral column (bone window 400/1800 "
        f"HU) of CT series {reformat.series_instance_uid}"
    )[:1024]
    sc.ImageComments = ascii_text(
        f"{NOT_FOR_DIAGNOSIS} without the source CT. {reformat_summary(result)}. "
        "Heights are measured in 3D in the SR; distances on this straightened image are "
        "approximate."
    )[:10240]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in mine}
    sources = []
    for uid in reformat.sop_instance_uids:
        ds = by_uid.get(uid)
        if ds is None:
            continue
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        purpose = Dataset()
        purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = _SOURCE_PURPOSE
        item.PurposeOfReferenceCodeSequence = [purpose]
        sources.append(item)
    sc.SourceImageSequence = sources
    copy_body_part(sc, ref)
    apply_equipment(sc, result)
    logger.debug("built CT reformat SC %s for series %s", sop_uid, reformat.series_instance_uid)
    return sc


def build_reformat_gsps(
    sc: Dataset,
    result: StudyResult,
    settings: Settings,
    *,
    series_uid: str,
    sop_uid: str,
) -> GrayscaleSoftcopyPresentationState:
    """Build the GSPS that draws the CT vertebrae's heights and grades on the reformat.

    Parameters
    ----------
    sc : pydicom.dataset.Dataset
        The reformat's Secondary Capture (`build_reformat_sc`).
    result : StudyResult
        The analysis (``ct`` analysed).
    settings : Settings
        ``node.uid_root`` (tracking UIDs shared with the SR),
        ``output.series_description_prefix``.
    series_uid, sop_uid : str
        Series and SOP Instance UIDs.

    Returns
    -------
    highdicom.pr.GrayscaleSoftcopyPresentationState
        Grade layers with the height lines and labels, and the summary layer.
    """
    ct = result.ct
    assert ct is not None
    prov = result.provenance
    facts = equipment(prov)
    trackings = ct_vertebra_trackings(result, settings.node.uid_root, str(sc.SOPInstanceUID))
    labels = {
        t.uid: f"{vertebra_label(t.vertebra)} - {v.characterisation.label} "
        f"{v.characterisation.probability:.2f}"
        for t, v in zip(trackings, ct.vertebrae, strict=True)
        if v.characterisation is not None
    }
    drawn = analysis_annotations(
        sc, ct.on_reformat(), trackings, first_order=1, first_group_id=1, labels=labels
    )
    summary_layer = GraphicLayer(
        layer_name=SUMMARY_LAYER,
        order=len(GenantGrade) + 2,
        description="AI result summary",
        display_color=CIELabColor.from_rgb(255, 255, 255),
    )
    summary = GraphicAnnotation(
        referenced_images=[sc],
        graphic_layer=summary_layer,
        text_objects=[
            TextObject(
                text_value=reformat_summary(result),
                units=AnnotationUnitsValues.DISPLAY,
                bounding_box=(0.01, 0.01, 0.99, 0.05),
                text_justification=TextJustificationValues.LEFT,
            )
        ],
    )
    content = f"AI CT reformat {prov.bundle_name} {prov.bundle_version}"
    tail = f" {DEMO_WARNING}" if prov.demo else " - not for diagnosis"
    gsps = GrayscaleSoftcopyPresentationState(
        referenced_images=[sc],
        series_instance_uid=series_uid,
        series_number=REFORMAT_GSPS_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=facts.manufacturer,
        manufacturer_model_name=facts.model_name,
        software_versions=list(facts.software_versions),  # type: ignore[arg-type]
        device_serial_number=facts.device_serial_number,
        content_label=CONTENT_LABEL,
        content_description=ascii_text(content[: 64 - len(tail)] + tail),
        graphic_annotations=[*drawn.annotations, summary],
        graphic_layers=[*drawn.layers, summary_layer],
        graphic_groups=drawn.groups or None,
        presentation_lut_transformation=PresentationLUTTransformation(
            presentation_lut_shape="IDENTITY"
        ),
        contributing_equipment=[contributing_equipment(result)],
        series_description=series_description(settings, prov, "reformat"),
    )
    set_displayed_area_spacing(gsps, sc)
    copy_body_part(gsps, sc)
    apply_equipment(gsps, result, content_date=False)
    logger.debug("built CT reformat GSPS %s", sop_uid)
    return gsps
