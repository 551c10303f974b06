"""Helpers shared by the output builders.

Class colours, box geometry, safe text, the image looked up in a result, and the VOI an
output carries over from its source.
"""

from __future__ import annotations

import copy
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
    choice to the application when both are present.) A VOI LUT's entries are decoded
    whatever the layout of its LUT Data (US or OW; 8-bit entries packed two per word or
    one per word) and keep the bits per entry of its LUT Descriptor.

    Parameters
    ----------
    source : pydicom.dataset.Dataset
        The image.

    Returns
    -------
    Window or Lut or None
        The chosen VOI.
    """
    item = _first_lut_item(source)
    if item is not None:
        explanation = item.get("LUTExplanation")
        bits = int(item.LUTDescriptor[2])
        return Lut(
            first_mapped=int(item.LUTDescriptor[1]),
            data=_entry_array(_lut_entries(item), bits),
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


def voi_lut_item(source: Dataset) -> Dataset | None:
    """Return the VOI LUT that `read_voi` chooses, as a new VOI LUT Sequence item.

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
    source : pydicom.dataset.Dataset
        The image.

    Returns
    -------
    pydicom.dataset.Dataset or None
        A new item (LUT Descriptor, LUT Explanation when the source has one, LUT Data);
        None when `read_voi` does not choose a VOI LUT.

    References
    ----------
    PS3.3 C.11.2.1.1 VOI LUT, C.11.8 Softcopy VOI LUT Module.
    """
    src = _first_lut_item(source)
    if src is None:
        return None
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
    values = _lut_entries(src).astype(np.float64)
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


def _first_lut_item(source: Dataset) -> Dataset | None:
    """Return the first VOI LUT Sequence item when it has a LUT Descriptor and LUT Data."""
    sequence = source.get("VOILUTSequence")
    if sequence and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]:
        item: Dataset = sequence[0]
        return item
    return None


def _standard_layout(item: Dataset) -> bool:
    """Whether a LUT item's data is encoded as PS3.3 C.11.2.1.1.1 requires (little endian)."""
    entries, _, bits = (int(v) for v in item.LUTDescriptor)
    if bits not in (8, 16) or (bits == 8 and entries % 2):
        return False
    raw: Any = item.LUTData
    if isinstance(raw, bytes | bytearray):
        if item.original_encoding[1] is False or len(raw) % 2:
            return False
        words = len(raw) // 2
    else:
        words = len(_as_list(raw))
    return words == ((entries or 65536) if bits == 16 else ((entries or 65536) + 1) // 2)


def _lut_entries(item: Dataset) -> npt.NDArray[np.int64]:
    """Decode a LUT item's entries, whatever the layout of its data.

    LUT Data is read as 16-bit words (US values, or OW bytes in the byte order the item was
    read in); with 8 or fewer bits per entry and fewer words than entries, each word holds
    two entries, the first in its low byte (PS3.3 C.11.2.1.1.1), else one entry per word.
    """
    entries = int(item.LUTDescriptor[0]) or 65536
    bits = int(item.LUTDescriptor[2])
    raw: Any = item.LUTData
    if isinstance(raw, bytes | bytearray):
        even = bytes(raw) + b"\x00" * (len(raw) % 2)
        order = ">u2" if item.original_encoding[1] is False else "<u2"
        words = np.frombuffer(even, dtype=order).astype(np.int64)
    else:
        words = np.asarray(_as_list(raw), dtype=np.int64) & 0xFFFF
    if bits <= 8 and len(words) < entries:
        words = np.column_stack([words & 0xFF, words >> 8]).ravel()
    return words[:entries]


def _entry_array(
    entries: npt.NDArray[np.int64], bits: int
) -> npt.NDArray[np.uint16] | npt.NDArray[np.uint8]:
    if bits <= 8:
        return entries.astype(np.uint8)
    return entries.astype(np.uint16)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, MultiValue | Sequence) else [value]


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
