"""Preview of a source image as one of its GSPS presents it, boxes drawn (admin pages).

dcmtk's ``dcmp2pgm`` applies a presentation state's grey-scale pipeline but draws none of its
graphic annotations, so the node renders previews itself:

1. Decode the stored values (`spinexr.pipeline.preprocess.decode_pixels`).
2. Grey levels by the node's display pipeline (`spinexr.pipeline.display.display_pixels`):
   the presentation state's Modality LUT when it has one (highdicom copies the source's
   Rescale Slope/Intercept or Modality LUT Sequence into the GSPS), else the source's; the
   VOI of the GSPS's Softcopy VOI LUT Sequence item that applies to the image, else the VOI
   the node's GSPS carries over from the source (`spinexr.pipeline.display.read_voi`: first
   VOI LUT, else first window, else the full range of the data), scaled to its nominal
   range (``2**bits - 1`` is white for a VOI LUT, as dcmtk does); the GSPS's Presentation
   LUT (shape or sequence; with neither, MONOCHROME1 is inverted).
3. 8 bits, shrunk to fit ``max_size`` (`spinexr.pipeline.preprocess.resize_image`), RGB.
4. Graphic annotations that apply to the image, layer by layer in Graphic Layer Order:
   text objects, then graphic objects (POLYLINE and INTERPOLATED as polylines, POINT as a
   cross, CIRCLE, ELLIPSE; filled when Graphic Filled is Y), in the layer's recommended
   colour (`layer_colours`: CIELab, else grey value, else a fixed palette by layer order)
   unless an object has its own Line/Text Style colour.

Without a presentation state the image is rendered by the node's display pipeline
(`spinexr.pipeline.preprocess.display_image`: what the models see, bone bright).

Coordinates: PIXEL units have their origin at the top-left corner of the top-left pixel
(PS3.3 C.10.5.1.2); a point ``p`` lands on output pixel ``floor(p × scale)``. DISPLAY units
(fractions, 0..1) map to the whole preview: the node's GSPS displays the whole image.

Not applied: Spatial Transformation (rotation, flip), Displayed Area zoom and pan, shutters
and overlays. The node's GSPS sets none of them; a presentation state that has a rotation or
a flip is rendered without it (logged as a warning).
"""

from __future__ import annotations

import functools
import io
import logging
import math
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from highdicom.color import CIELabColor
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from spinexr.pipeline.display import display_pixels
from spinexr.pipeline.preprocess import decode_pixels, display_image, resize_image

logger = logging.getLogger(__name__)

DEFAULT_MAX_SIZE: Final = 1024
"""Longest side of a preview, in pixels."""

PALETTE: Final[tuple[tuple[int, int, int], ...]] = (
    (255, 215, 0),
    (0, 200, 255),
    (255, 0, 255),
    (255, 140, 0),
    (0, 230, 0),
    (255, 40, 40),
    (140, 140, 255),
    (255, 255, 255),
)
"""Colours of layers without a recommended display value, by position in layer order."""

RGB = tuple[int, int, int]
_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
_MIN_FONT: Final = 8
_TEXT_FILL: Final = 0.8
"""Font size relative to the height of a text object's bounding box."""
_ELLIPSE_POINTS: Final = 72


def render_preview(
    source: Dataset,
    gsps: Dataset | None = None,
    *,
    max_size: int | None = DEFAULT_MAX_SIZE,
    line_width: int | None = None,
) -> npt.NDArray[np.uint8]:
    """Render a source image as a presentation state presents it, with its annotations.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        A single-frame greyscale image with its pixel data.
    gsps : pydicom.dataset.Dataset, optional
        A Grayscale Softcopy Presentation State referencing the image. Without one the
        image is rendered by the node's display pipeline and nothing is drawn.
    max_size : int or None
        Longest side of the preview; the image is shrunk to fit (never enlarged). None
        keeps the source's size.
    line_width : int, optional
        Width in preview pixels of drawn lines; by default 1 per 512 pixels of the
        preview's longer side (at least 1).

    Returns
    -------
    numpy.ndarray
        ``(rows, columns, 3)`` uint8 RGB.

    Raises
    ------
    ValueError
        If ``gsps`` does not reference the image, or ``max_size`` is below 1.
    spinexr.pipeline.errors.UnsupportedImageError
        If the pixel data cannot be decoded or the Modality LUT/VOI cannot be applied.
    """
    gray = present(source, gsps)
    rows, cols = gray.shape
    scale = preview_scale(rows, cols, max_size)
    size = (max(1, round(rows * scale)), max(1, round(cols * scale)))
    canvas = Image.fromarray(resize_image(gray, size), mode="L").convert("RGB")
    if gsps is not None:
        width = line_width or max(1, round(max(size) / 512))
        _draw_annotations(canvas, gsps, str(source.SOPInstanceUID), scale, width)
    return np.asarray(canvas, dtype=np.uint8)


def preview_png(
    source: Dataset,
    gsps: Dataset | None = None,
    *,
    max_size: int | None = DEFAULT_MAX_SIZE,
    line_width: int | None = None,
) -> bytes:
    """Return `render_preview`'s image as PNG bytes.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The image with its pixel data.
    gsps : pydicom.dataset.Dataset, optional
        A presentation state referencing it.
    max_size : int or None
        Longest side of the preview (None: the source's size).
    line_width : int, optional
        Width of drawn lines (see `render_preview`).

    Returns
    -------
    bytes
        An 8-bit RGB PNG.
    """
    rgb = render_preview(source, gsps, max_size=max_size, line_width=line_width)
    out = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(out, format="PNG")
    return out.getvalue()


def preview_scale(rows: int, columns: int, max_size: int | None) -> float:
    """Return the factor that shrinks an image to fit ``max_size`` (1 when it fits).

    Parameters
    ----------
    rows, columns : int
        Image size.
    max_size : int or None
        Longest side allowed (None: no limit).

    Returns
    -------
    float
        In ``(0, 1]``.

    Raises
    ------
    ValueError
        If ``max_size`` is below 1.
    """
    if max_size is None:
        return 1.0
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1, got {max_size}")
    return min(1.0, max_size / max(rows, columns))


# ----------------------------------------------------------------------------- grey levels


def present(source: Dataset, gsps: Dataset | None = None) -> npt.NDArray[np.uint8]:
    """Return the grey levels a presentation state gives an image (no annotations).

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        A single-frame greyscale image with its pixel data.
    gsps : pydicom.dataset.Dataset, optional
        A presentation state referencing the image; without one, the node's display
        pipeline (`spinexr.pipeline.preprocess.display_image`).

    Returns
    -------
    numpy.ndarray
        ``(rows, columns)`` uint8 P-values, 255 = white.

    Raises
    ------
    ValueError
        If ``gsps`` does not reference the image.
    spinexr.pipeline.errors.UnsupportedImageError
        If the pixel data cannot be decoded or the display pipeline refuses the header.
    """
    stored = decode_pixels(source)
    if gsps is None:
        gray, _ = display_image(source, stored)
        return gray
    uid = str(source.SOPInstanceUID)
    if not references_image(gsps, uid):
        raise ValueError(f"the presentation state does not reference image {uid}")
    _warn_unsupported(gsps)
    has_modality = bool(gsps.get("ModalityLUTSequence")) or "RescaleSlope" in gsps
    voi = applicable_item(gsps.get("SoftcopyVOILUTSequence"), uid)
    modality = gsps if has_modality else None
    return display_pixels(stored, source, voi=voi, modality=modality, presentation=gsps)


# ----------------------------------------------------------------------------- references


def references_image(gsps: Dataset, sop_instance_uid: str) -> bool:
    """Say whether a presentation state's Referenced Series Sequence lists an image.

    Parameters
    ----------
    gsps : pydicom.dataset.Dataset
        The presentation state.
    sop_instance_uid : str
        The image.

    Returns
    -------
    bool
        True when one of its referenced images is the image.
    """
    return any(
        str(image.ReferencedSOPInstanceUID) == sop_instance_uid
        for series in gsps.get("ReferencedSeriesSequence", [])
        for image in series.get("ReferencedImageSequence", [])
    )


def applicable_item(items: Sequence[Dataset] | None, sop_instance_uid: str) -> Dataset | None:
    """Return the first item that applies to an image (PS3.3 C.10.5, C.11.8, C.10.4).

    Parameters
    ----------
    items : sequence of pydicom.dataset.Dataset or None
        E.g. Softcopy VOI LUT or Displayed Area Selection items.
    sop_instance_uid : str
        The image.

    Returns
    -------
    pydicom.dataset.Dataset or None
        The first item without a Referenced Image Sequence (applies to every image) or
        whose Referenced Image Sequence lists the image.
    """
    for item in items or []:
        if _applies(item, sop_instance_uid):
            return item
    return None


def _applies(item: Dataset, sop_instance_uid: str) -> bool:
    refs = item.get("ReferencedImageSequence")
    if not refs:
        return True
    return any(str(ref.ReferencedSOPInstanceUID) == sop_instance_uid for ref in refs)


def _warn_unsupported(gsps: Dataset) -> None:
    rotation = int(gsps.get("ImageRotation") or 0)
    flip = str(gsps.get("ImageHorizontalFlip") or "N").upper() == "Y"
    if rotation or flip:
        logger.warning(
            "preview of %s ignores its spatial transformation (rotation %d, flip %s)",
            gsps.get("SOPInstanceUID", "?"),
            rotation,
            "Y" if flip else "N",
        )


# ----------------------------------------------------------------------------- colours


def layer_colours(gsps: Dataset) -> dict[str, RGB]:
    """Return the sRGB colour a preview draws each graphic layer in.

    Parameters
    ----------
    gsps : pydicom.dataset.Dataset
        The presentation state.

    Returns
    -------
    dict of str to tuple of int
        Layer name → colour: from Graphic Layer Recommended Display CIELab Value, else from
        its Recommended Display Grayscale Value, else `PALETTE` by position in layer
        order.
    """
    out: dict[str, RGB] = {}
    for position, layer in enumerate(_layers_in_order(gsps)):
        lab = layer.get("GraphicLayerRecommendedDisplayCIELabValue")
        grey = layer.get("GraphicLayerRecommendedDisplayGrayscaleValue")
        if lab is not None and len(lab) == 3:
            colour = lab_to_rgb(lab)
        elif grey is not None:
            level = round(int(grey) * 255 / 65535)
            colour = (level, level, level)
        else:
            colour = PALETTE[position % len(PALETTE)]
        out[str(layer.GraphicLayer)] = colour
    return out


def lab_to_rgb(value: Sequence[int]) -> RGB:
    """Convert a DICOM CIELab triplet (three 16-bit values, PS3.3 C.10.7.1.1) to sRGB.

    Parameters
    ----------
    value : sequence of int
        ``(L*, a*, b*)`` scaled to ``0..65535``.

    Returns
    -------
    tuple of int
        sRGB ``0..255`` (out-of-gamut colours clipped).
    """
    r, g, b = CIELabColor.from_dicom_value([int(v) for v in value]).to_rgb(clip=True)
    return (_channel(r), _channel(g), _channel(b))


def _channel(value: float) -> int:
    return min(255, max(0, round(float(value))))


def _layers_in_order(gsps: Dataset) -> list[Dataset]:
    layers = list(gsps.get("GraphicLayerSequence", []))
    return sorted(layers, key=lambda layer: int(layer.get("GraphicLayerOrder") or 0))


# ----------------------------------------------------------------------------- drawing


def _draw_annotations(
    canvas: Image.Image, gsps: Dataset, uid: str, scale: float, width: int
) -> None:
    """Draw a presentation state's annotations of one image, lowest layer first."""
    colours = layer_colours(gsps)
    order = {name: position for position, name in enumerate(colours)}
    annotations = [a for a in gsps.get("GraphicAnnotationSequence", []) if _applies(a, uid)]
    annotations.sort(key=lambda a: order.get(str(a.get("GraphicLayer", "")), len(order)))
    draw = ImageDraw.Draw(canvas)
    mapper = _Mapper(scale, canvas.width, canvas.height)
    for number, annotation in enumerate(annotations):
        name = str(annotation.get("GraphicLayer", ""))
        colour = colours.get(name, PALETTE[(len(order) + number) % len(PALETTE)])
        for text in annotation.get("TextObjectSequence", []):
            _draw_text(draw, text, mapper, _style_colour(text, "TextStyleSequence", colour))
        for graphic in annotation.get("GraphicObjectSequence", []):
            _draw_graphic(
                draw, graphic, mapper, _style_colour(graphic, "LineStyleSequence", colour), width
            )


class _Mapper:
    """Maps annotation coordinates (PIXEL or DISPLAY units) to preview pixel indices."""

    def __init__(self, scale: float, width: int, height: int) -> None:
        self.scale, self.width, self.height = scale, width, height

    def point(self, x: float, y: float, units: str) -> tuple[float, float]:
        """Return continuous preview coordinates (corner origin) of a point."""
        if units.upper() == "DISPLAY":
            return x * self.width, y * self.height
        return x * self.scale, y * self.scale

    def nth(self, values: Sequence[Any], n: int, units: str) -> tuple[float, float]:
        """Return continuous preview coordinates of the n-th (x, y) pair of a flat list."""
        return self.point(float(values[2 * n]), float(values[2 * n + 1]), units)

    def pixel(self, x: float, y: float, units: str) -> tuple[int, int]:
        """Return the preview pixel a point lands on (clipped to the preview)."""
        return self.index(*self.point(x, y, units))

    def index(self, px: float, py: float) -> tuple[int, int]:
        """Return the preview pixel holding continuous preview coordinates (clipped)."""
        return (
            min(max(math.floor(px), 0), self.width - 1),
            min(max(math.floor(py), 0), self.height - 1),
        )


def _style_colour(obj: Dataset, keyword: str, default: RGB) -> RGB:
    """Return an object's own colour (Line or Text Style Sequence), else ``default``."""
    style = obj.get(keyword)
    if style:
        text = keyword == "TextStyleSequence"
        lab = style[0].get("TextColorCIELabValue" if text else "PatternOnColorCIELabValue")
        if lab is not None and len(lab) == 3:
            return lab_to_rgb(lab)
    return default


def _draw_graphic(
    draw: ImageDraw.ImageDraw, graphic: Dataset, mapper: _Mapper, colour: RGB, width: int
) -> None:
    units = str(graphic.get("GraphicAnnotationUnits") or "PIXEL")
    data = [float(v) for v in graphic.get("GraphicData") or []]
    points = [mapper.pixel(x, y, units) for x, y in zip(data[0::2], data[1::2], strict=False)]
    kind = str(graphic.get("GraphicType") or "").upper()
    filled = str(graphic.get("GraphicFilled") or "N").upper() == "Y"
    if not points:
        return
    if kind == "POINT":
        x, y = points[0]
        arm = 2 * width + 1
        draw.line([(x - arm, y), (x + arm, y)], fill=colour, width=width)
        draw.line([(x, y - arm), (x, y + arm)], fill=colour, width=width)
        return
    if kind == "CIRCLE" and len(points) >= 2:
        (cx, cy), (px, py) = mapper.nth(data, 0, units), mapper.nth(data, 1, units)
        radius = math.hypot(px - cx, py - cy)
        polygon = [
            mapper.index(cx + radius * math.cos(t), cy + radius * math.sin(t))
            for t in np.linspace(0.0, 2 * math.pi, _ELLIPSE_POINTS)
        ]
    elif kind == "ELLIPSE" and len(points) >= 4:
        polygon = _ellipse(data, units, mapper)
    elif kind in ("POLYLINE", "INTERPOLATED"):
        polygon = points
    else:
        logger.debug("preview does not draw graphic type %s", kind)
        return
    if filled and len(polygon) >= 3:
        draw.polygon(polygon, fill=colour, outline=colour)
    elif len(polygon) == 1:
        draw.point(polygon, fill=colour)
    else:
        draw.line(polygon, fill=colour, width=width, joint="curve" if width > 2 else None)


def _ellipse(data: list[float], units: str, mapper: _Mapper) -> list[tuple[int, int]]:
    """Polygon of an ELLIPSE given by its major then minor axis end points."""
    (ax, ay), (bx, by) = mapper.nth(data, 0, units), mapper.nth(data, 1, units)
    (cx2, cy2), (dx, dy) = mapper.nth(data, 2, units), mapper.nth(data, 3, units)
    mx, my = (ax + bx) / 2, (ay + by) / 2
    major = math.hypot(bx - ax, by - ay) / 2
    minor = math.hypot(dx - cx2, dy - cy2) / 2
    angle = math.atan2(by - ay, bx - ax)
    out = []
    for t in np.linspace(0.0, 2 * math.pi, _ELLIPSE_POINTS):
        u, v = major * math.cos(t), minor * math.sin(t)
        x = mx + u * math.cos(angle) - v * math.sin(angle)
        y = my + u * math.sin(angle) + v * math.cos(angle)
        out.append(mapper.index(x, y))
    return out


def _draw_text(draw: ImageDraw.ImageDraw, text: Dataset, mapper: _Mapper, colour: RGB) -> None:
    value = str(text.get("UnformattedTextValue") or "").replace("\r\n", "\n").replace("\r", "\n")
    if not value.strip():
        return
    default_size = max(_MIN_FONT, round(0.025 * max(mapper.width, mapper.height)))
    if "BoundingBoxTopLeftHandCorner" in text:
        units = str(text.get("BoundingBoxAnnotationUnits") or "PIXEL")
        left, top = mapper.nth(text.BoundingBoxTopLeftHandCorner, 0, units)
        right, bottom = mapper.nth(text.BoundingBoxBottomRightHandCorner, 0, units)
        lines = value.count("\n") + 1
        size = max(_MIN_FONT, round(_TEXT_FILL * abs(bottom - top) / lines))
        # Shrink to the box's width too: a viewer keeps a text object within its box.
        natural = draw.multiline_textbbox((0, 0), value, font=_font(size))[2]
        if natural > abs(right - left) > 0:
            size = max(_MIN_FONT, math.floor(size * abs(right - left) / natural))
        left, top = min(left, right), min(top, bottom)
    elif "AnchorPoint" in text:
        units = str(text.get("AnchorPointAnnotationUnits") or "PIXEL")
        left, top = mapper.nth(text.AnchorPoint, 0, units)
        size = default_size
    else:
        return
    font = _font(size)
    stroke = 1 if size >= 12 else 0
    draw.multiline_text(
        (left, top), value, fill=colour, font=font, stroke_width=stroke, stroke_fill=(0, 0, 0)
    )


@functools.lru_cache(maxsize=32)
def _font(size: int) -> _Font:
    return ImageFont.load_default(size=size)
