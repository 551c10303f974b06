"""A Secondary Capture with the boxes burned in, for viewers that ignore GSPS.

Optional per site (``output.secondary_capture``). The source image is rendered the way the
GSPS presents it (`spinexr.pipeline.display.display_pixels`: Modality LUT, the VOI the GSPS
carries over, inverted for MONOCHROME1) to 8 bits, converted to RGB, and the displayed boxes
are drawn in their class colours with a ``"<class> <score>"`` label. A black banner across the
top says ``"AI RESULT - NOT FOR DIAGNOSIS"`` (``"... - DEMO - NOT FOR CLINICAL USE"`` for a demo
bundle) and the one-line summary. Burned In Annotation is YES, Conversion Type WSD
(workstation), the source is referenced in the Source Image Sequence; the matrix is the
source's, without a pixel spacing (a capture is not for measuring).
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
from highdicom.sc import SCImage
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from spinexr.node.outputs.boxes import CLASS_COLOURS, box_corners
from spinexr.node.outputs.gsps import box_label, summary_text
from spinexr.node.outputs.provenance import (
    DEMO_WARNING,
    NOT_FOR_DIAGNOSIS,
    SERIES_NUMBERS,
    apply_equipment,
    box_trackings,
    contributing_equipment,
    equipment,
    series_description,
)
from spinexr.node.outputs.source import analysed_image, ascii_text, copy_body_part
from spinexr.node.outputs.vertebrae_gsps import GRADE_COLOURS, label_box, vertebra_label
from spinexr.node.outputs.vertebrae_tracking import height_lines, vertebra_trackings
from spinexr.node.settings import Settings
from spinexr.pipeline.display import display_pixels
from spinexr.pipeline.preprocess import decode_pixels
from spinexr.pipeline.results import ImageResult, StudyResult

logger = logging.getLogger(__name__)

_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
_MIN_FONT = 10


def build_sc(
    source: Dataset,
    result: StudyResult,
    settings: Settings,
    *,
    series_uid: str,
    sop_uid: str,
    instance_number: int = 1,
) -> SCImage:
    """Build the Secondary Capture of a source image with its displayed boxes burned in.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The source image, with its pixel data (decoded here, in memory).
    result : StudyResult
        The study's analysis (the image's result is looked up by SOP Instance UID).
    settings : Settings
        ``node.uid_root`` (box numbering shared with SR/GSPS),
        ``output.series_description_prefix``.
    series_uid, sop_uid : str
        Series and SOP Instance UIDs of the capture.
    instance_number : int
        Instance Number.

    Returns
    -------
    highdicom.sc.SCImage
        An RGB, 8-bit Secondary Capture Image with Burned In Annotation YES.

    Raises
    ------
    ValueError
        If the image is not in the result or was not analysed.

    References
    ----------
    PS3.3 A.8.1 Secondary Capture Image IOD.
    """
    image = analysed_image(source, result, "secondary capture")
    prov = result.provenance
    facts = equipment(prov)
    rgb = render(source, image, result, settings)
    sc = SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBERS["sc"],
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer=facts.manufacturer,
        patient_orientation=_orientation(source),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[contributing_equipment(result)],
        series_description=series_description(settings, prov, "sc"),
        manufacturer_model_name=facts.model_name,
        software_versions=list(facts.software_versions),
        device_serial_number=facts.device_serial_number,
    )
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = ascii_text(summary_text(image, result))[:10240]
    sc.DerivationDescription = "AI findings (boxes, vertebral heights) burned into the source image"
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    copy_body_part(sc, source)
    apply_equipment(sc, result)
    logger.debug("built SC %s for image %s", sop_uid, image.sop_instance_uid)
    return sc


def render(
    source: Dataset, image: ImageResult, result: StudyResult, settings: Settings
) -> npt.NDArray[np.uint8]:
    """Render a source image with its displayed boxes, vertebrae, labels and the AI banner.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The image with pixel data.
    image : ImageResult
        Its analysis.
    result : StudyResult
        The study (provenance, thresholds, box numbering).
    settings : Settings
        ``node.uid_root``.

    Returns
    -------
    numpy.ndarray
        ``(rows, columns, 3)`` uint8 RGB.
    """
    gray = grayscale_8bit(source)
    canvas = Image.fromarray(gray, mode="L").convert("RGB")
    draw = ImageDraw.Draw(canvas)
    rows, cols = gray.shape
    line = max(2, round(min(rows, cols) / 300))
    font_size = max(_MIN_FONT, round(rows * 0.025))
    font = ImageFont.load_default(size=font_size)

    lines: list[tuple[str, tuple[int, int, int], int]] = [
        (NOT_FOR_DIAGNOSIS, (255, 255, 0), font_size)
    ]
    if result.provenance.demo:
        lines.append((DEMO_WARNING, (255, 255, 0), font_size))
    lines.append((summary_text(image, result), (255, 255, 255), max(_MIN_FONT, font_size * 3 // 4)))
    banner: list[tuple[str, tuple[int, int, int], _Font]] = []
    for text, colour, size in lines:
        fitted = ImageFont.load_default(size=size)
        banner.extend((part, colour, fitted) for part in _wrap(draw, text, fitted, cols - 8))
    heights = [_text_height(draw, part, f) + 2 for part, _, f in banner]
    draw.rectangle((0, 0, cols, sum(heights) + 4), fill=(0, 0, 0))
    y = 2
    for (part, colour, f), step in zip(banner, heights, strict=True):
        draw.text((4, y), part, fill=colour, font=f)
        y += step

    for tracking in box_trackings(result, settings.node.uid_root):
        if tracking.sop_instance_uid != image.sop_instance_uid:
            continue
        colour = CLASS_COLOURS[tracking.box.label]
        x0, y0, x1, y1 = box_corners(tracking.box, rows, cols)
        draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=colour, width=line)
        text = box_label(tracking)
        text_height = _text_height(draw, text, font)
        label_y = y0 - text_height - line - 2 if y0 - text_height - line - 2 >= 0 else y1 + line
        _draw_label(draw, text, font, colour, x0, label_y, cols)
    _draw_vertebrae(draw, image, result, settings, rows, cols, line)
    return np.asarray(canvas, dtype=np.uint8)


def _draw_vertebrae(
    draw: ImageDraw.ImageDraw,
    image: ImageResult,
    result: StudyResult,
    settings: Settings,
    rows: int,
    cols: int,
    line: int,
) -> None:
    """Burn in each vertebra as its GSPS draws it.

    The three height lines in its grade's colour and its label (``"L1 G 0.68 moderate
    wedge"``) beside the anterior height.
    """
    for tracking in vertebra_trackings(result, settings.node.uid_root):
        if tracking.sop_instance_uid != image.sop_instance_uid:
            continue
        vertebra = tracking.vertebra
        colour = GRADE_COLOURS[vertebra.grade]
        for points in height_lines(vertebra, rows, cols):
            draw.line([(float(x), float(y)) for x, y in points], fill=colour, width=line)
        left, top, _, bottom = label_box(vertebra, rows, cols)
        font = ImageFont.load_default(size=max(_MIN_FONT, round(bottom - top)))
        _draw_label(draw, vertebra_label(vertebra), font, colour, left, top, cols)


def _draw_label(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: _Font,
    colour: tuple[int, int, int],
    left: float,
    top: float,
    cols: int,
) -> None:
    """Draw a label on a black background at ``(left, top)``, moved left to fit the image."""
    _, _, width, height = draw.textbbox((0, 0), text, font=font)
    left = min(max(0.0, left), max(0.0, cols - width - 2))
    draw.rectangle((left, top, left + width + 2, top + height + 2), fill=(0, 0, 0))
    draw.text((left + 1, top), text, fill=colour, font=font)


def _text_height(draw: ImageDraw.ImageDraw, text: str, font: _Font) -> int:
    box = draw.textbbox((0, 0), text or " ", font=font)
    return int(box[3])


def _wrap(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: _Font,
    width: float,
) -> list[str]:
    """Split ``text`` at spaces into lines no wider than ``width`` (long words kept whole)."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if current and draw.textlength(trial, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = trial
    if current:
        lines.append(current)
    return lines


def grayscale_8bit(source: Dataset) -> npt.NDArray[np.uint8]:
    """Return a source image as displayed: Modality LUT, VOI, polarity, 8 bits.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        A single-frame grayscale image with pixel data.

    Returns
    -------
    numpy.ndarray
        ``(rows, columns)`` uint8, 255 = white (MONOCHROME1 is inverted).
    """
    return display_pixels(decode_pixels(source), source)


def _orientation(source: Dataset) -> tuple[str, str] | None:
    value = source.get("PatientOrientation")
    if value is not None and len(value) == 2 and all(value):
        return (str(value[0]), str(value[1]))
    return None
