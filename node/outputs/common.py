"""Helpers shared by the output builders.

Class colours, box geometry, safe text, the image looked up in a result, and the VOI an
output carries over from its source.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from spinexr.pipeline.classes import LesionClass
from spinexr.pipeline.results import Box, ImageResult, StudyResult

CLASS_COLOURS: dict[LesionClass, tuple[int, int, int]] = {
    LesionClass.OSTEOPHYTES: (255, 215, 0),
    LesionClass.SURGICAL_IMPLANT: (0, 200, 255),
    LesionClass.SPONDYLOLISTHESIS: (255, 0, 255),
    LesionClass.FORAMINAL_STENOSIS: (255, 140, 0),
    LesionClass.DISC_SPACE_NARROWING: (0, 230, 0),
    LesionClass.VERTEBRAL_COLLAPSE: (255, 40, 40),
    LesionClass.OTHER_LESIONS: (140, 140, 255),
}
"""sRGB colour of each class (GSPS layers store it as CIELab; the Secondary Capture draws it)."""


def box_corners(box: Box, rows: int, columns: int) -> tuple[float, float, float, float]:
    """Return a box's corners clipped to the image.

    Parameters
    ----------
    box : Box
        Corners in original pixels, origin at the top-left corner of the top-left pixel: the
        convention of SR SCOORD and GSPS PIXEL units (PS3.3 C.18.6.1.2, C.10.5.1.2), so no
        half-pixel shift is needed.
    rows, columns : int
        Image size.

    Returns
    -------
    tuple of float
        ``(xmin, ymin, xmax, ymax)`` within ``[0, columns] × [0, rows]``.
    """
    cols, rws = float(columns), float(rows)
    return (
        min(max(box.xmin, 0.0), cols),
        min(max(box.ymin, 0.0), rws),
        min(max(box.xmax, 0.0), cols),
        min(max(box.ymax, 0.0), rws),
    )


def closed_rectangle(box: Box, rows: int, columns: int) -> npt.NDArray[np.float64]:
    """Return a box as a closed 5-point polyline of (column, row) points.

    Parameters
    ----------
    box : Box
        The box (original pixels).
    rows, columns : int
        Image size (the box is clipped to it).

    Returns
    -------
    numpy.ndarray
        ``(5, 2)`` points clockwise from the top-left corner; the last equals the first.
    """
    x0, y0, x1, y1 = box_corners(box, rows, columns)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float64)


def ascii_text(text: str) -> str:
    """Return ``text`` with accents stripped and other non-ASCII characters replaced by ``?``.

    Text written into output objects must survive whatever Specific Character Set the
    sources carry (it is copied from them).

    Parameters
    ----------
    text : str
        Any text.

    Returns
    -------
    str
        ASCII text.
    """
    folded = unicodedata.normalize("NFKD", text)
    return "".join(
        ch if ch.isascii() else ("" if unicodedata.combining(ch) else "?") for ch in folded
    )


def analysed_image(source: Dataset, result: StudyResult, what: str) -> ImageResult:
    """Return the analysis of a source image.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The image.
    result : StudyResult
        The study's analysis.
    what : str
        The object being built (for the error message).

    Returns
    -------
    ImageResult
        The image's result.

    Raises
    ------
    ValueError
        If the image is not in the result, or was not analysed.
    """
    uid = str(source.SOPInstanceUID)
    for image in result.images:
        if image.sop_instance_uid == uid:
            if image.failed:
                raise ValueError(f"image {uid} was not analysed: no {what}")
            return image
    raise ValueError(f"image {uid} is not part of the result for {result.study_instance_uid}")


def copy_body_part(target: Dataset, source: Dataset) -> None:
    """Copy Body Part Examined and Laterality (General Series) into a per-image object.

    Laterality is type 2C, required for paired body parts: with the source's Body Part
    Examined copied, dciodvfy can tell the spine is not paired; without one, Laterality is
    written (the source's, else empty: unknown).

    Parameters
    ----------
    target : pydicom.dataset.Dataset
        The output object (modified in place).
    source : pydicom.dataset.Dataset
        Its source image.
    """
    if source.get("BodyPartExamined"):
        target.BodyPartExamined = source.BodyPartExamined
    if source.get("Laterality"):
        target.Laterality = source.Laterality
    elif not source.get("BodyPartExamined"):
        target.Laterality = ""


# ----------------------------------------------------------------------------- VOI


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2).

    Attributes
    ----------
    center, width : float
        Window Center and Width.
    explanation : str or None
        Window Center & Width Explanation.
    function : str
        VOI LUT Function (``LINEAR`` when absent).
    """

    center: float
    width: float
    explanation: str | None
    function: str


@dataclass(frozen=True)
class Lut:
    """A VOI LUT (PS3.3 C.11.2.1.1).

    Attributes
    ----------
    first_mapped : int
        Stored value mapped to the first entry.
    data : numpy.ndarray
        Entries (uint8 or uint16).
    bits : int
        Bits per entry (from the LUT Descriptor).
    explanation : str or None
        LUT Explanation.
    """

    first_mapped: int
    data: npt.NDArray[np.uint16] | npt.NDArray[np.uint8]
    bits: int
    explanation: str | None


def read_voi(source: Dataset) -> Window | Lut | None:
    """Return the VOI transformation an output carries over from its source image.

    The first item of its VOI LUT Sequence when it has one, else the first window, else
    None: the order of the node's display pipeline (`spinexr.pipeline.preprocess`), so the
    GSPS and the Secondary Capture show what the models saw. (PS3.3 C.11.2 leaves the
    choice to the application when both are present.)

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The image.

    Returns
    -------
    Window or Lut or None
        The chosen VOI.
    """
    sequence = source.get("VOILUTSequence")
    if sequence and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]:
        item = sequence[0]
        explanation = item.get("LUTExplanation")
        bits = int(item.LUTDescriptor[2])
        return Lut(
            first_mapped=int(item.LUTDescriptor[1]),
            data=_lut_data(item, bits),
            bits=bits,
            explanation=None if not explanation else str(explanation)[:64],
        )
    if "WindowCenter" in source and "WindowWidth" in source:
        explanation = _first(source.get("WindowCenterWidthExplanation"))
        function = source.get("VOILUTFunction") or "LINEAR"
        return Window(
            center=float(_first(source.WindowCenter)),
            width=float(_first(source.WindowWidth)),
            explanation=None if explanation in (None, "") else str(explanation)[:64],
            function=str(function).upper(),
        )
    return None


def _lut_data(item: Dataset, bits: int) -> npt.NDArray[np.uint16] | npt.NDArray[np.uint8]:
    """Decode a VOI LUT item's LUT Data (OW bytes or US values)."""
    entries = int(item.LUTDescriptor[0]) or 65536
    raw: Any = item.LUTData
    if isinstance(raw, bytes | bytearray):
        data = np.frombuffer(raw, dtype="<u2" if len(raw) >= 2 * entries else "u1")
    elif isinstance(raw, MultiValue | Sequence):
        data = np.asarray(list(raw))
    else:
        data = np.asarray([raw])
    data = data[:entries]
    if bits <= 8:
        return data.astype(np.uint8)
    return data.astype(np.uint16)


def _first(value: Any) -> Any:
    if isinstance(value, MultiValue | list | tuple):
        return value[0] if len(value) else None
    return value


def apply_voi(values: npt.NDArray[np.float64], voi: Window | Lut | None) -> npt.NDArray[np.float64]:
    """Apply a VOI transformation, giving values in ``[0, 1]``.

    Parameters
    ----------
    values : numpy.ndarray
        Modality LUT output.
    voi : Window or Lut or None
        A window (PS3.3 C.11.2.1.2: LINEAR, LINEAR_EXACT, SIGMOID), a VOI LUT (values
        outside its domain take its end entries; entries scaled by ``2**bits - 1``), or
        None for the full range of ``values``.

    Returns
    -------
    numpy.ndarray
        Same shape, in ``[0, 1]`` (all zeros for a constant image without a VOI).
    """
    if isinstance(voi, Window):
        c, w = voi.center, voi.width
        if voi.function == "SIGMOID":
            out = 1.0 / (1.0 + np.exp(-4.0 * (values - c) / max(w, 1e-6)))
        elif voi.function == "LINEAR_EXACT":
            out = (values - c) / max(w, 1e-6) + 0.5
        elif w <= 1.0:
            out = (values > c - 0.5).astype(np.float64)
        else:
            out = (values - (c - 0.5)) / (w - 1.0) + 0.5
    elif isinstance(voi, Lut):
        index = np.clip(np.rint(values).astype(np.int64) - voi.first_mapped, 0, len(voi.data) - 1)
        out = voi.data[index].astype(np.float64) / float(2**voi.bits - 1)
    else:
        lo, hi = float(values.min()), float(values.max())
        out = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return np.clip(out, 0.0, 1.0)
