"""A Grayscale Softcopy Presentation State drawing one image's displayed boxes.

Per analysed source image: one graphic layer per lesion class present (stable names, order
and recommended CIELab colour, `CLASS_LAYERS`), each box a closed POLYLINE rectangle in PIXEL
units plus a text label ``"<class> <score>"`` just above it (below or inside when there is no
room), and an ``AI_SUMMARY`` layer with one line of text in DISPLAY units saying what the AI
concluded (and that it is a demo, for a demo bundle).

Tracking: each box's rectangle and label carry the Tracking ID and Tracking UID of the SR's
planar ROI group for that box (Graphic Object / Text Object Sequence attributes, PS3.3
C.10.5), and both belong to one Graphic Group labelled with the same identifier, so a viewer
can move them together and a reader can match GSPS and SR findings.

Vertebral fractures: height lines and labels in one layer per Genant grade above these, or a
"not analysed for vertebral fractures" line (`spinexr.node.outputs.vertebrae_gsps`).

Display: the source's VOI is carried over in the order the models' display pipeline uses —
the first item of its VOI LUT Sequence (descriptor, data and explanation unchanged, or the
same table re-encoded where the source's encoding is not one PS3.3 allows), else its first
window (centre, width, explanation, VOI LUT Function) — so the radiologist sees what the
models saw; the Modality LUT is copied by highdicom; ``PresentationLUTShape`` is INVERSE for
MONOCHROME1 and IDENTITY otherwise; the displayed area is the whole image, scaled to fit,
with Presentation Pixel Spacing from the spacing the source has (Pixel Spacing, else Imager
Pixel Spacing; aspect ratio 1:1 when it has neither).
Body Part Examined is copied (dciodvfy checks Laterality against it; without one, an empty
Laterality is written).
"""

from __future__ import annotations

import logging

from highdicom import VOILUT, PresentationLUTTransformation
from highdicom.color import CIELabColor
from highdicom.pr import (
    AnnotationUnitsValues,
    GraphicAnnotation,
    GraphicGroup,
    GraphicLayer,
    GraphicObject,
    GraphicTypeValues,
    GrayscaleSoftcopyPresentationState,
    SoftcopyVOILUTTransformation,
    TextJustificationValues,
    TextObject,
)
from pydicom.dataset import Dataset

from spinexr.node.outputs.boxes import CLASS_COLOURS, box_corners, closed_rectangle
from spinexr.node.outputs.provenance import (
    DEMO_WARNING,
    SERIES_NUMBERS,
    BoxTracking,
    apply_equipment,
    box_trackings,
    contributing_equipment,
    equipment,
    series_description,
)
from spinexr.node.outputs.source import analysed_image, ascii_text, copy_body_part
from spinexr.node.outputs.vertebrae_gsps import vertebral_annotations
from spinexr.node.outputs.voilut import voi_lut_item
from spinexr.node.settings import Settings
from spinexr.pipeline.classes import LesionClass
from spinexr.pipeline.display import Lut, Window, read_voi
from spinexr.pipeline.results import ImageResult, StudyResult
from spinexr.pipeline.spacing import SpacingBasis, read_pixel_spacing

logger = logging.getLogger(__name__)

CLASS_LAYERS: dict[LesionClass, str] = {
    LesionClass.OSTEOPHYTES: "OSTEOPHYTES",
    LesionClass.SURGICAL_IMPLANT: "SURGICAL_IMPLANT",
    LesionClass.SPONDYLOLISTHESIS: "SPONDYLOLISTH",
    LesionClass.FORAMINAL_STENOSIS: "FORAMINAL_STEN",
    LesionClass.DISC_SPACE_NARROWING: "DISC_NARROWING",
    LesionClass.VERTEBRAL_COLLAPSE: "VERT_COLLAPSE",
    LesionClass.OTHER_LESIONS: "OTHER_LESIONS",
}
"""Graphic Layer name (CS, at most 16 characters) of each class; layer order = class id + 1."""

SUMMARY_LAYER = "AI_SUMMARY"
CONTENT_LABEL = "AI_SPINEXR"
DEMO_CONTENT_LABEL = "AI_SPINEXR_DEMO"

_LABEL_HEIGHT_FRACTION = 0.03
"""Height of a box label relative to the image rows (at least `_LABEL_MIN_HEIGHT` pixels)."""
_LABEL_MIN_HEIGHT = 12.0
_CHAR_ASPECT = 0.6


def build_gsps(
    source: Dataset,
    result: StudyResult,
    settings: Settings,
    *,
    series_uid: str,
    sop_uid: str,
    instance_number: int = 1,
) -> GrayscaleSoftcopyPresentationState:
    """Build the GSPS that draws a source image's displayed boxes.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The source image (its header suffices: Rows, Columns, photometric interpretation,
        VOI, spacing, patient/study modules).
    result : StudyResult
        The study's analysis; the image's result is looked up by SOP Instance UID, its
        provenance and box tracking come from here (study-wide box numbering shared with
        the SR).
    settings : Settings
        ``node.uid_root`` (tracking UIDs), ``output.series_description_prefix``.
    series_uid, sop_uid : str
        Series and SOP Instance UIDs of the presentation state.
    instance_number : int
        Instance Number.

    Returns
    -------
    highdicom.pr.GrayscaleSoftcopyPresentationState
        The presentation state; it draws only boxes with ``displayed=True``.

    Raises
    ------
    ValueError
        If the image is not in the result, or could not be analysed.

    References
    ----------
    PS3.3 A.33.1 Grayscale Softcopy Presentation State IOD; C.10.5 Graphic Annotation,
    C.10.7 Graphic Layer, C.10.4 Displayed Area, C.11.8 Softcopy VOI LUT.
    """
    image = analysed_image(source, result, "presentation state")
    prov = result.provenance
    facts = equipment(prov)
    rows, cols = int(source.Rows), int(source.Columns)
    trackings = [
        t
        for t in box_trackings(result, settings.node.uid_root)
        if t.sop_instance_uid == image.sop_instance_uid
    ]

    layers: list[GraphicLayer] = []
    annotations: list[GraphicAnnotation] = []
    groups: list[GraphicGroup] = []
    for label in LesionClass:
        mine = [t for t in trackings if t.box.label is label]
        if not mine:
            continue
        layer = GraphicLayer(
            layer_name=CLASS_LAYERS[label],
            order=int(label) + 1,
            description=label.display_name,
            display_color=CIELabColor.from_rgb(*CLASS_COLOURS[label]),
        )
        layers.append(layer)
        graphics, texts = [], []
        for tracking in mine:
            group = GraphicGroup(
                graphic_group_id=tracking.number,
                label=tracking.identifier[:64],
                description=f"Tracking UID {tracking.uid}",
            )
            groups.append(group)
            graphics.append(
                GraphicObject(
                    graphic_type=GraphicTypeValues.POLYLINE,
                    graphic_data=closed_rectangle(tracking.box, rows, cols),
                    units=AnnotationUnitsValues.PIXEL,
                    tracking_id=tracking.identifier,
                    tracking_uid=tracking.uid,
                    graphic_group=group,
                )
            )
            texts.append(
                TextObject(
                    text_value=box_label(tracking),
                    units=AnnotationUnitsValues.PIXEL,
                    bounding_box=label_box(tracking, rows, cols),
                    text_justification=TextJustificationValues.LEFT,
                    tracking_id=tracking.identifier,
                    tracking_uid=tracking.uid,
                    graphic_group=group,
                )
            )
        annotations.append(
            GraphicAnnotation(
                referenced_images=[source],
                graphic_layer=layer,
                graphic_objects=graphics,
                text_objects=texts,
            )
        )
    summary_layer = GraphicLayer(
        layer_name=SUMMARY_LAYER,
        order=len(LesionClass) + 1,
        description="AI result summary",
        display_color=CIELabColor.from_rgb(255, 255, 255),
    )
    layers.append(summary_layer)
    annotations.append(
        GraphicAnnotation(
            referenced_images=[source],
            graphic_layer=summary_layer,
            text_objects=[
                TextObject(
                    text_value=summary_text(image, result),
                    units=AnnotationUnitsValues.DISPLAY,
                    bounding_box=(0.01, 0.01, 0.99, 0.05),
                    text_justification=TextJustificationValues.LEFT,
                )
            ],
        )
    )

    vertebral = vertebral_annotations(
        source,
        image,
        result,
        settings.node.uid_root,
        first_order=len(LesionClass) + 2,
        first_group_id=1 + max((t.number for t in trackings), default=0),
    )
    layers += vertebral.layers
    annotations += vertebral.annotations
    groups += vertebral.groups

    mono1 = str(source.PhotometricInterpretation).upper() == "MONOCHROME1"
    gsps = GrayscaleSoftcopyPresentationState(
        referenced_images=[source],
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBERS["gsps"],
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer=facts.manufacturer,
        manufacturer_model_name=facts.model_name,
        software_versions=list(facts.software_versions),  # type: ignore[arg-type]
        device_serial_number=facts.device_serial_number,
        content_label=DEMO_CONTENT_LABEL if prov.demo else CONTENT_LABEL,
        content_description=_content_description(result),
        graphic_annotations=annotations,
        graphic_layers=layers,
        graphic_groups=groups or None,
        voi_lut_transformations=source_voi(source),
        presentation_lut_transformation=PresentationLUTTransformation(
            presentation_lut_shape="INVERSE" if mono1 else "IDENTITY"
        ),
        contributing_equipment=[contributing_equipment(result)],
        series_description=series_description(settings, prov, "gsps"),
    )
    set_displayed_area_spacing(gsps, source)
    copy_body_part(gsps, source)
    apply_equipment(gsps, result, content_date=False)
    logger.debug("built GSPS %s for image %s", sop_uid, image.sop_instance_uid)
    return gsps


def box_label(tracking: BoxTracking) -> str:
    """Return the text drawn next to a box, e.g. ``"Osteophytes 0.87"``.

    Parameters
    ----------
    tracking : BoxTracking
        The box.

    Returns
    -------
    str
        Class display name and score (2 decimals).
    """
    return f"{tracking.box.label.display_name} {tracking.box.score:.2f}"


def label_box(tracking: BoxTracking, rows: int, columns: int) -> tuple[float, float, float, float]:
    """Return where a box's label goes: ``(left, top, right, bottom)`` in pixels.

    Above the box when there is room, else below it, else inside along its top edge; the
    width follows the text length; always within the image.

    Parameters
    ----------
    tracking : BoxTracking
        The box.
    rows, columns : int
        Image size.

    Returns
    -------
    tuple of float
        A non-empty rectangle within ``[0, columns] × [0, rows]``.
    """
    x0, y0, _, y1 = box_corners(tracking.box, rows, columns)
    height = min(max(rows * _LABEL_HEIGHT_FRACTION, _LABEL_MIN_HEIGHT), rows / 2)
    width = min(len(box_label(tracking)) * height * _CHAR_ASPECT, float(columns))
    left = min(x0, columns - width)
    if y0 - height >= 0:
        top = y0 - height
    elif y1 + height <= rows:
        top = y1
    else:
        top = y0
    top = min(top, rows - height)
    return (float(left), float(top), float(left + width), float(top + height))


def summary_text(image: ImageResult, result: StudyResult) -> str:
    """Return the one-line summary drawn at the top of the image.

    Parameters
    ----------
    image : ImageResult
        The image (analysed).
    result : StudyResult
        The study.

    Returns
    -------
    str
        E.g. ``"AI spinexr-demo 1.2.0: abnormal p=0.91 (threshold 0.50), 2 boxes"``, with
        the demo warning for a demo bundle (ASCII, at most 1024 characters).
    """
    prov = result.provenance
    verdict = "abnormal" if image.decision else "no abnormality"
    count = len(image.displayed_boxes)
    boxes = f"{count} box{'es' if count != 1 else ''}"
    text = (
        f"AI {prov.bundle_name} {prov.bundle_version}: {verdict} "
        f"p={image.probability:.2f} (threshold {result.threshold:.2f}), {boxes}"
    )
    if prov.demo:
        text += f" - {DEMO_WARNING}"
    return ascii_text(text)[:1024]


def source_voi(source: Dataset) -> list[SoftcopyVOILUTTransformation] | None:
    """Return the source image's VOI as a Softcopy VOI LUT (None when it has none).

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The image.

    Returns
    -------
    list of highdicom.pr.SoftcopyVOILUTTransformation or None
        One item carrying what `spinexr.pipeline.display.read_voi` chose: the first VOI
        LUT (`spinexr.node.outputs.voilut.voi_lut_item`: the source's LUT Descriptor, LUT
        Data with its VR and bytes, and LUT Explanation, unchanged when encoded as the
        standard requires, else the same table re-encoded as it requires), else the first
        window (with its explanation and VOI LUT Function).
    """
    voi = read_voi(source)
    if isinstance(voi, Window):
        window = SoftcopyVOILUTTransformation(
            window_center=voi.center,
            window_width=voi.width,
            voi_lut_function=voi.function if "VOILUTFunction" in source else None,
        )
        if voi.explanation is not None:
            # Set here: highdicom 0.28 splits a single explanation string into characters.
            window.WindowCenterWidthExplanation = voi.explanation  # type: ignore[assignment]
        return [window]
    if isinstance(voi, Lut):
        # Not VOILUT(first_mapped_value, lut_data): highdicom derives the bits per entry
        # from the array's dtype (16 for 12-bit entries in uint16, which a viewer then shows
        # almost black, or almost white once inverted) and rewrites US data as OW.
        item = voi_lut_item(voi.item)
        return [SoftcopyVOILUTTransformation(voi_luts=[VOILUT.from_dataset(item, copy=False)])]
    return None


def _content_description(result: StudyResult) -> str:
    prov = result.provenance
    text = f"AI results {prov.bundle_name} {prov.bundle_version}"
    if prov.demo:
        tail = f" {DEMO_WARNING}"
        return ascii_text(text[: 64 - len(tail)] + tail)
    return ascii_text(f"{text} - not for diagnosis")[:64]


def set_displayed_area_spacing(gsps: Dataset, source: Dataset) -> None:
    """Give the displayed area the source's pixel spacing (aspect ratio when it has none).

    Parameters
    ----------
    gsps : pydicom.dataset.Dataset
        The presentation state (its Displayed Area Selection items are changed).
    source : pydicom.dataset.Dataset
        The image it presents (Pixel Spacing, else Imager Pixel Spacing).
    """
    spacing = read_pixel_spacing(source)
    if spacing.basis is SpacingBasis.NONE or spacing.row_mm is None or spacing.column_mm is None:
        return
    for item in gsps.DisplayedAreaSelectionSequence:
        item.PresentationPixelSpacing = [f"{spacing.row_mm:.10g}", f"{spacing.column_mm:.10g}"]
        if "PresentationPixelAspectRatio" in item:
            del item.PresentationPixelAspectRatio
