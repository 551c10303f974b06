"""Helpers shared by the output builders.

Class colours, box geometry, safe text, the image looked up in a result, and the VOI LUT a
GSPS carries over from its source (chosen and decoded by `spinexr.pipeline.display`).
"""

from __future__ import annotations

import copy
import unicodedata
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from spinexr.pipeline.classes import LesionClass
from spinexr.pipeline.display import lut_entries, lut_words
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


# ----------------------------------------------------------------------------- VOI LUT


def voi_lut_item(src: Dataset) -> Dataset:
    """Return a source's VOI LUT as a new VOI LUT Sequence item for its GSPS.

    A LUT encoded as PS3.3 C.11.2.1.1.1 requires (8 or 16 bits per entry; 8-bit entries
    packed two per 16-bit word, the first in the low byte; 16-bit entries one per word) is
    copied unchanged: LUT Descriptor, LUT Explanation and LUT Data, each with its VR (US or
    OW) and value. Any other encoding of the table is rewritten as the nearest one that
    dciodvfy accepts, showing the same picture: entries of 9 to 15 bits (e.g. a
    ``[4096, 0, 12]`` descriptor with 12-bit data, as older editions allowed) are rescaled to
    16 bits (``round(v * 65535 / (2**bits - 1))``), entries of fewer than 8 bits to 8; 8-bit
    entries stored one per word are packed; an odd number of 8-bit entries (whose packed
    data needs a padding byte, which dciodvfy counts as an entry) is carried as 16 bits
    (``v * 257``, the same fractions); OW data read from a big endian file is written little
    endian. The number of entries, the first mapped value (with the descriptor's VR) and
    the explanation are always kept.

    Parameters
    ----------
    src : pydicom.dataset.Dataset
        The source's VOI LUT item (``spinexr.pipeline.display.Lut.item``).

    Returns
    -------
    pydicom.dataset.Dataset
        A new item: LUT Descriptor, LUT Explanation when the source has one, LUT Data.

    References
    ----------
    PS3.3 C.11.2.1.1 VOI LUT, C.11.8 Softcopy VOI LUT Module.
    """
    item = Dataset()
    descriptor = copy.deepcopy(src["LUTDescriptor"])
    if descriptor.VR not in ("US", "SS"):
        descriptor.VR = "SS" if int(descriptor.value[1]) < 0 else "US"
    item.add(descriptor)
    if "LUTExplanation" in src:
        item.add(copy.deepcopy(src["LUTExplanation"]))
    if _standard_layout(src):
        data = copy.deepcopy(src["LUTData"])
        if data.VR not in ("US", "OW"):
            data.VR = "OW" if isinstance(data.value, bytes | bytearray) else "US"
        item.add(data)
        return item
    entries, first, bits = (int(v) for v in src.LUTDescriptor)
    target = 8 if bits <= 8 and (entries or 65536) % 2 == 0 else 16
    values = lut_entries(src).astype(np.float64)
    if bits != target and bits >= 1:
        values = np.rint(values * (2**target - 1) / (2**bits - 1))
    values = np.clip(values, 0, 2**target - 1)
    descriptor.value = [entries, first, target]
    if target == 8:
        packed = values.astype(np.uint8).tobytes()
        item.add_new("LUTData", "OW", packed + b"\x00" * (len(packed) % 2))
    else:
        item.add_new("LUTData", "OW", values.astype("<u2").tobytes())
    return item


def _standard_layout(item: Dataset) -> bool:
    """Whether a LUT item's data is encoded as PS3.3 C.11.2.1.1.1 requires (little endian)."""
    entries, _, bits = (int(v) for v in item.LUTDescriptor)
    if bits not in (8, 16) or (bits == 8 and entries % 2):
        return False
    raw: Any = item.LUTData
    if isinstance(raw, bytes | bytearray) and (item.original_encoding[1] is False or len(raw) % 2):
        return False
    entries = entries or 65536
    return len(lut_words(item)) == (entries if bits == 16 else (entries + 1) // 2)
