"""The vertebral fracture analysis in an image's GSPS: height lines and labels by grade.

`vertebral_annotations` returns the graphic layers, annotations and graphic groups that
`spinexr.node.outputs.gsps.build_gsps` adds to the presentation state of an image:

- an analysed image: one graphic layer per Genant grade present (`GRADE_LAYERS`, with a
  recommended CIELab display colour from `GRADE_COLOURS`: normal green, mild yellow, moderate
  orange, severe red) in increasing order normal < mild < moderate < severe, so fractured
  vertebrae are drawn on top. Per vertebra, in its grade's layer: its three height lines
  (POLYLINE of two points, top and bottom keypoint, PIXEL units) and a text label such as
  ``"L1 G 0.68 moderate wedge"`` (``"#3 G 0.91 normal"`` when the level is not established)
  beside the vertebra on its anterior side, inside the image (`label_box`). Lines and label
  carry the Tracking ID and UID of the vertebra's SR groups
  (`spinexr.node.outputs.vertebrae_tracking`) and belong to one Graphic Group labelled with
  the tracking identifier.
- an image not analysed for vertebral fractures: a ``VERT_STATUS`` layer with one line of
  text in DISPLAY units at the bottom, ``"not analysed for vertebral fractures: <reason>"``.
- an image without a vertebral analysis (``vertebrae`` None): nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from highdicom.color import CIELabColor
from highdicom.pr import (
    AnnotationUnitsValues,
    GraphicAnnotation,
    GraphicGroup,
    GraphicLayer,
    GraphicObject,
    GraphicTypeValues,
    TextJustificationValues,
    TextObject,
)
from pydicom.dataset import Dataset

from spinexr.node.outputs.source import ascii_text
from spinexr.node.outputs.vertebrae_tracking import (
    VertebraTracking,
    height_lines,
    keypoints_in_image,
    vertebra_trackings,
)
from spinexr.pipeline.results import ImageResult, StudyResult
from spinexr.pipeline.vertebrae.findings import VertebraFinding, VertebralAnalysis
from spinexr.pipeline.vertebrae.genant import Deformity, GenantGrade

logger = logging.getLogger(__name__)

GRADE_LAYERS: dict[GenantGrade, str] = {
    GenantGrade.NORMAL: "VERT_NORMAL",
    GenantGrade.MILD: "VERT_MILD",
    GenantGrade.MODERATE: "VERT_MODERATE",
    GenantGrade.SEVERE: "VERT_SEVERE",
}
"""Graphic Layer name (CS, at most 16 characters) of each grade."""

GRADE_COLOURS: dict[GenantGrade, tuple[int, int, int]] = {
    GenantGrade.NORMAL: (0, 200, 0),
    GenantGrade.MILD: (255, 230, 0),
    GenantGrade.MODERATE: (255, 140, 0),
    GenantGrade.SEVERE: (255, 0, 0),
}
"""sRGB colour of each grade (stored as the layer's recommended CIELab value)."""

STATUS_LAYER = "VERT_STATUS"
"""Layer of the "not analysed for vertebral fractures" text."""

_LABEL_FRACTION = 0.35
"""Label height relative to the vertebral body's height (at least `_LABEL_MIN` pixels)."""
_LABEL_MIN = 8.0
_CHAR_ASPECT = 0.6
_MIN_SHRINK = 0.5
"""A label shrinks to fit the room on the anterior side down to this fraction, else moves."""


@dataclass
class VertebralAnnotations:
    """What the vertebral analysis adds to one presentation state.

    Attributes
    ----------
    layers : list of highdicom.pr.GraphicLayer
        Grade layers present (and the status layer).
    annotations : list of highdicom.pr.GraphicAnnotation
        One per layer.
    groups : list of highdicom.pr.GraphicGroup
        One per vertebra.
    """

    layers: list[GraphicLayer] = field(default_factory=list)
    annotations: list[GraphicAnnotation] = field(default_factory=list)
    groups: list[GraphicGroup] = field(default_factory=list)


def vertebral_annotations(
    source: Dataset,
    image: ImageResult,
    result: StudyResult,
    root: str,
    *,
    first_order: int,
    first_group_id: int,
) -> VertebralAnnotations:
    """Return the layers, annotations and graphic groups of an image's vertebral analysis.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The source image (Rows, Columns).
    image : ImageResult
        Its result.
    result : StudyResult
        The study (tracking UIDs).
    root : str
        UID root.
    first_order : int
        Graphic Layer Order of the normal layer; mild, moderate, severe and the status layer
        follow (+1 … +4).
    first_group_id : int
        Graphic Group ID of the first vertebra (the others follow).

    Returns
    -------
    VertebralAnnotations
        Empty when the image has no vertebral analysis.
    """
    analysis = image.vertebrae
    if analysis is None:
        return VertebralAnnotations()
    mine = [
        t for t in vertebra_trackings(result, root) if t.sop_instance_uid == image.sop_instance_uid
    ]
    return analysis_annotations(
        source, analysis, mine, first_order=first_order, first_group_id=first_group_id
    )


def analysis_annotations(
    source: Dataset,
    analysis: VertebralAnalysis,
    trackings: list[VertebraTracking],
    *,
    first_order: int,
    first_group_id: int,
    labels: Mapping[str, str] | None = None,
) -> VertebralAnnotations:
    """Return the layers, annotations and graphic groups of one vertebral analysis on an image.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The image drawn on (Rows, Columns): a radiograph, or a CT reformat.
    analysis : VertebralAnalysis
        The analysis, in the image's pixels.
    trackings : list of VertebraTracking
        Its vertebrae with their tracking identifiers and UIDs.
    first_order : int
        Graphic Layer Order of the normal layer; mild, moderate, severe and the status layer
        follow (+1 … +4).
    first_group_id : int
        Graphic Group ID of the first vertebra (the others follow).
    labels : mapping of str to str, optional
        Tracking UID → label to draw instead of `vertebra_label` (e.g. with a CT vertebra's
        benign / malignant call).

    Returns
    -------
    VertebralAnnotations
        A layer per grade present, or the status layer of an analysis that did not run.
    """
    out = VertebralAnnotations()
    if not analysis.analysed:
        _add_status(out, source, analysis, first_order + len(GenantGrade))
        return out
    rows, cols = int(source.Rows), int(source.Columns)
    group_ids = {t.uid: first_group_id + i for i, t in enumerate(trackings)}
    for grade in GenantGrade:
        graded = [t for t in trackings if t.vertebra.grade is grade]
        if not graded:
            continue
        layer = GraphicLayer(
            layer_name=GRADE_LAYERS[grade],
            order=first_order + grade.number,
            description=f"Vertebrae, Genant grade {grade.value}",
            display_color=CIELabColor.from_rgb(*GRADE_COLOURS[grade]),
        )
        graphics: list[GraphicObject] = []
        texts: list[TextObject] = []
        for tracking in graded:
            group = GraphicGroup(
                graphic_group_id=group_ids[tracking.uid],
                label=tracking.identifier[:64],
                description=f"Tracking UID {tracking.uid}",
            )
            out.groups.append(group)
            graphics += _height_objects(tracking, rows, cols, group)
            text = (labels or {}).get(tracking.uid) or vertebra_label(tracking.vertebra)
            texts.append(
                TextObject(
                    text_value=text,
                    units=AnnotationUnitsValues.PIXEL,
                    bounding_box=label_box(tracking.vertebra, rows, cols, text),
                    text_justification=TextJustificationValues.LEFT,
                    tracking_id=tracking.identifier,
                    tracking_uid=tracking.uid,
                    graphic_group=group,
                )
            )
        out.layers.append(layer)
        out.annotations.append(
            GraphicAnnotation(
                referenced_images=[source],
                graphic_layer=layer,
                graphic_objects=graphics,
                text_objects=texts,
            )
        )
    return out


def vertebra_label(vertebra: VertebraFinding) -> str:
    """Return the text drawn beside a vertebra.

    Parameters
    ----------
    vertebra : VertebraFinding
        The vertebra.

    Returns
    -------
    str
        ``"L1 G 0.68 moderate wedge"``; ``"#3 G 0.91 normal"`` when the level is not
        established (no deformity word for a normal body).
    """
    text = f"{vertebra.label} G {vertebra.genant_index:.2f} {vertebra.grade.value}"
    if vertebra.deformity is not Deformity.NONE:
        text += f" {vertebra.deformity.value}"
    return text


def label_box(
    vertebra: VertebraFinding, rows: int, columns: int, text: str | None = None
) -> tuple[float, float, float, float]:
    """Return where a vertebra's label goes: ``(left, top, right, bottom)`` in pixels.

    Beside the anterior height (the side of the anterior keypoints), vertically centred on
    it, as high as `_LABEL_FRACTION` of the body; shrunk (to half at most) to fit the room on
    that side, else on the posterior side when it has more room; always within the image.

    Parameters
    ----------
    vertebra : VertebraFinding
        The vertebra.
    rows, columns : int
        Image size.
    text : str, optional
        The label drawn (default `vertebra_label`): its length sets the width.

    Returns
    -------
    tuple of float
        A non-empty rectangle within ``[0, columns] × [0, rows]``.
    """
    kp = keypoints_in_image(vertebra, rows, columns)
    body = max(float(np.ptp(kp[:, 1])), 1.0)
    height = min(max(body * _LABEL_FRACTION, _LABEL_MIN), rows / 4)
    width = len(text or vertebra_label(vertebra)) * height * _CHAR_ASPECT
    gap = 0.3 * height
    anterior, posterior = kp[[0, 1], 0], kp[[4, 5], 0]
    faces_left = anterior.mean() <= posterior.mean()
    room_left = float(min(anterior.min(), posterior.min())) - gap
    room_right = columns - float(max(anterior.max(), posterior.max())) - gap
    rooms = (room_left, room_right) if faces_left else (room_right, room_left)
    room, on_left = rooms[0], faces_left
    if room < width * _MIN_SHRINK and rooms[1] > room:
        room, on_left = rooms[1], not faces_left
    scale = max(_MIN_SHRINK, min(1.0, room / width))
    height, width = height * scale, min(width * scale, float(columns))
    if on_left:
        left = float(min(anterior.min(), posterior.min())) - gap - width
    else:
        left = float(max(anterior.max(), posterior.max())) + gap
    left = min(max(left, 0.0), columns - width)
    top = min(max(float(kp[[0, 1], 1].mean()) - height / 2, 0.0), rows - height)
    return (left, top, left + width, top + height)


def not_analysed_text(analysis: VertebralAnalysis) -> str:
    """Return the text an image not analysed for vertebral fractures shows.

    Parameters
    ----------
    analysis : VertebralAnalysis
        The analysis (not analysed).

    Returns
    -------
    str
        ``"not analysed for vertebral fractures: <reason>"`` (ASCII, at most 1024 characters).
    """
    reason = analysis.reason or analysis.status.value
    return ascii_text(f"not analysed for vertebral fractures: {reason}")[:1024]


def _height_objects(
    tracking: VertebraTracking, rows: int, columns: int, group: GraphicGroup
) -> list[GraphicObject]:
    return [
        GraphicObject(
            graphic_type=GraphicTypeValues.POLYLINE,
            graphic_data=line,
            units=AnnotationUnitsValues.PIXEL,
            tracking_id=tracking.identifier,
            tracking_uid=tracking.uid,
            graphic_group=group,
        )
        for line in height_lines(tracking.vertebra, rows, columns)
    ]


def _add_status(
    out: VertebralAnnotations, source: Dataset, analysis: VertebralAnalysis, order: int
) -> None:
    layer = GraphicLayer(
        layer_name=STATUS_LAYER,
        order=order,
        description="Vertebral fracture analysis status",
        display_color=CIELabColor.from_rgb(255, 255, 255),
    )
    out.layers.append(layer)
    out.annotations.append(
        GraphicAnnotation(
            referenced_images=[source],
            graphic_layer=layer,
            text_objects=[
                TextObject(
                    text_value=not_analysed_text(analysis),
                    units=AnnotationUnitsValues.DISPLAY,
                    bounding_box=(0.01, 0.94, 0.99, 0.98),
                    text_justification=TextJustificationValues.LEFT,
                )
            ],
        )
    )
