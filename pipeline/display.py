"""The grey-scale display pipeline: Modality LUT, VOI, polarity (PS3.3 C.11, PS3.4 N.2).

The one home of these steps for every picture the node makes of an image:

- the models' input (`spinexr.pipeline.preprocess.display_image`, ``method.md`` section 3):
  `voi_output` gives the VOI output in pydicom's units, which preprocessing min-max scales
  to ``0..255`` (MONOCHROME1 inverted);
- what a viewer shows (the admin preview, with or without a GSPS, and the Secondary
  Capture): `display_pixels` scales the VOI output by its nominal range (a window's, or
  ``2**bits - 1`` for a VOI LUT), applies the Presentation LUT (without one, MONOCHROME1 is
  inverted) and gives ``0..255``, 255 white.

Both choose the VOI the same way (`read_voi`: the VOI LUT Sequence's first item, else the
first window, else the full range of the data) and apply it with pydicom's
``apply_modality_lut``, ``apply_windowing`` (LINEAR, LINEAR_EXACT, SIGMOID) and
``apply_voi_lut``.

Hand-written where pydicom 3.0 gives other pixels; ``tests/pipeline/test_display.py`` shows
each case, so it fails once pydicom is fixed and the workaround can go:

- 8-bit VOI LUTs: ``apply_voi_lut`` reads LUT Data as one entry per 16-bit word and indexes
  the table with the table's own ``uint8`` type, so the standard encoding (two entries per
  word) is refused and a table of more than 256 entries stored one per word wraps around
  (a flat picture); tables of 9 or fewer than 8 bits per entry are refused. `lut_entries`
  decodes every layout; such tables are looked up here.
- Presentation LUT: ``apply_presentation_lut`` takes the image's own extremes for black and
  white (INVERSE is ``max(image) - value``; a Presentation LUT Sequence is indexed by the
  image's min-max range, truncated) where PS3.3 C.11.6 maps the whole VOI output range, so
  a picture that does not reach white would be shifted. Here INVERSE is ``1 - value`` and the
  sequence is indexed by the rounded VOI output.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

from spinexr.pipeline.errors import ImageRefusal, UnsupportedImageError


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
        Entries (uint8 or uint16), decoded whatever the layout of the LUT Data.
    bits : int
        Bits per entry (from the LUT Descriptor).
    explanation : str or None
        LUT Explanation.
    item : pydicom.dataset.Dataset
        The VOI LUT Sequence item it was read from.
    """

    first_mapped: int
    data: npt.NDArray[np.uint16] | npt.NDArray[np.uint8]
    bits: int
    explanation: str | None
    item: Dataset = field(repr=False, compare=False)


Voi: TypeAlias = Window | Lut | None
"""A VOI transformation; None: the full range of the data."""

_OUTPUT_RANGE: Final = (
    "PhotometricInterpretation",
    "BitsStored",
    "PixelRepresentation",
    "ModalityLUTSequence",
    "RescaleSlope",
    "RescaleIntercept",
)
"""What pydicom derives a window's output range from (PS3.3 C.11.2.1.2: the Modality LUT's)."""


# ----------------------------------------------------------------------------- choosing


def read_voi(ds: Dataset) -> Voi:
    """Return the VOI transformation the node applies to an image.

    The first item of the VOI LUT Sequence when it has a LUT Descriptor and LUT Data, else
    the first Window Center/Width, else None (the full range). ``ds`` is an image or an
    item of a presentation state's Softcopy VOI LUT Sequence. (PS3.3 C.11.2 leaves the
    choice to the application when both are present.)

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image or Softcopy VOI LUT item.

    Returns
    -------
    Window or Lut or None
        The chosen VOI.

    Raises
    ------
    ValueError
        If the LUT Descriptor says other than 1 to 16 bits per entry, or the LUT Data holds
        fewer entries than it says; TypeError for an empty Window Center or Width.
    """
    item = _first_lut_item(ds)
    if item is not None:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        if not 1 <= bits <= 16:
            raise ValueError(f"a VOI LUT has {bits} bits per entry (1 to 16 are possible)")
        data = lut_entries(item)
        if len(data) < (entries or 65536):
            raise ValueError(f"a VOI LUT holds {len(data)} of its {entries or 65536} entries")
        explanation = item.get("LUTExplanation")
        return Lut(
            first_mapped=first,
            data=data.astype(np.uint8) if bits <= 8 else data.astype(np.uint16),
            bits=bits,
            explanation=None if not explanation else str(explanation)[:64],
            item=item,
        )
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        explanation = _first(ds.get("WindowCenterWidthExplanation"))
        return Window(
            center=float(_first(ds.WindowCenter)),
            width=float(_first(ds.WindowWidth)),
            explanation=None if explanation in (None, "") else str(explanation)[:64],
            function=str(ds.get("VOILUTFunction") or "LINEAR").upper(),
        )
    return None


def _first_lut_item(ds: Dataset) -> Dataset | None:
    """Return the VOI LUT Sequence's first item when it has a LUT Descriptor and LUT Data."""
    sequence = ds.get("VOILUTSequence")
    if not sequence:
        return None
    item: Dataset = sequence[0]
    if item.get("LUTDescriptor") is None or item.get("LUTData") is None:
        return None
    return item


def lut_entries(item: Dataset) -> npt.NDArray[np.int64]:
    """Decode a LUT item's entries, whatever the layout of its LUT Data.

    LUT Data is read as 16-bit words (US values, or OW bytes in the byte order the item was
    read in, little endian when unknown); with 8 or fewer bits per entry and fewer words
    than entries, each word holds two entries, the first in its low byte (PS3.3
    C.11.2.1.1.1), else one entry per word.

    Parameters
    ----------
    item : pydicom.dataset.Dataset
        A VOI or Presentation LUT item (LUT Descriptor and LUT Data).

    Returns
    -------
    numpy.ndarray
        At most the descriptor's number of entries (0 meaning 65536).
    """
    entries = int(item.LUTDescriptor[0]) or 65536
    words = lut_words(item)
    if int(item.LUTDescriptor[2]) <= 8 and len(words) < entries:
        words = np.column_stack([words & 0xFF, words >> 8]).ravel()
    return words[:entries]


def lut_words(item: Dataset) -> npt.NDArray[np.int64]:
    """Return a LUT item's LUT Data as 16-bit words (see `lut_entries`)."""
    raw: Any = item.LUTData
    if isinstance(raw, bytes | bytearray):
        even = bytes(raw) + b"\x00" * (len(raw) % 2)
        order = ">u2" if item.original_encoding[1] is False else "<u2"
        return np.frombuffer(even, dtype=order).astype(np.int64)
    values = list(raw) if isinstance(raw, MultiValue | Sequence) else [raw]
    return np.asarray(values, dtype=np.int64) & 0xFFFF


# ----------------------------------------------------------------------------- applying


def voi_output(stored: npt.NDArray[Any], image: Dataset) -> tuple[npt.NDArray[np.float64], Voi]:
    """Apply an image's Modality LUT and VOI in pydicom's units (the models' numbers).

    Returns
    -------
    tuple of (numpy.ndarray, Window or Lut or None)
        A window's output over the range of the image's Modality LUT output (as
        ``apply_windowing`` gives it), a VOI LUT's entries, or the Modality LUT output when
        there is no VOI; and the VOI (`read_voi`).

    Raises
    ------
    spinexr.pipeline.errors.UnsupportedImageError
        ``invalid_header`` when a LUT or window cannot be applied (e.g. width < 1).
    """
    with _invalid_header(image):
        values = np.asarray(apply_modality_lut(stored, image), dtype=np.float64)
        voi = read_voi(image)
        if isinstance(voi, Window):
            return _windowing(values, voi, image), voi
        if isinstance(voi, Lut):
            return _lookup(values, voi), voi
        return values, voi


def display_pixels(
    stored: npt.NDArray[Any],
    image: Dataset,
    *,
    voi: Dataset | None = None,
    modality: Dataset | None = None,
    presentation: Dataset | None = None,
) -> npt.NDArray[np.uint8]:
    """Return the grey levels a viewer shows: Modality LUT, VOI, Presentation LUT, 8 bits.

    Parameters
    ----------
    stored : numpy.ndarray
        Decoded stored values of ``image``.
    image : pydicom.dataset.Dataset
        The image: its Photometric Interpretation, and its Modality LUT and VOI by default.
    voi, modality : pydicom.dataset.Dataset, optional
        Where the VOI (`read_voi`) and the Modality LUT come from instead: a presentation
        state's Softcopy VOI LUT item for the image; a presentation state that has one.
    presentation : pydicom.dataset.Dataset, optional
        A presentation state: its Presentation LUT (`apply_presentation`).

    Returns
    -------
    numpy.ndarray
        ``uint8`` P-values, 255 white.

    Raises
    ------
    spinexr.pipeline.errors.UnsupportedImageError
        ``invalid_header`` when a LUT or window cannot be applied.
    """
    with _invalid_header(image):
        values = apply_modality_lut(stored, image if modality is None else modality)
        chosen = read_voi(image if voi is None else voi)
        unit = apply_voi(np.asarray(values, dtype=np.float64), chosen)
        unit = apply_presentation(unit, presentation, image)
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def apply_voi(values: npt.NDArray[np.float64], voi: Voi) -> npt.NDArray[np.float64]:
    """Apply a VOI transformation scaled to its nominal range, giving values in ``[0, 1]``.

    Parameters
    ----------
    values : numpy.ndarray
        Modality LUT output.
    voi : Window or Lut or None
        A window (LINEAR, LINEAR_EXACT, SIGMOID: pydicom's ``apply_windowing``, 0 to 1); a
        VOI LUT (values outside its domain take its end entries; entries divided by
        ``2**bits - 1``); None: the full range of ``values``.

    Returns
    -------
    numpy.ndarray
        Same shape, in ``[0, 1]`` (all zeros for a constant image without a VOI).
    """
    if isinstance(voi, Window):
        out = _windowing(values, voi, None)
    elif isinstance(voi, Lut):
        out = _lookup(values, voi) / float(2**voi.bits - 1)
    else:
        lo, hi = float(values.min()), float(values.max())
        out = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return np.clip(out, 0.0, 1.0)


def apply_presentation(
    unit: npt.NDArray[np.float64], presentation: Dataset | None, image: Dataset
) -> npt.NDArray[np.float64]:
    """Apply a Presentation LUT Sequence or Shape to VOI output in ``[0, 1]`` (PS3.3 C.11.6).

    Parameters
    ----------
    unit : numpy.ndarray
        `apply_voi`'s output.
    presentation : pydicom.dataset.Dataset or None
        A presentation state: its Presentation LUT Sequence (indexed by the rounded
        ``unit * (entries - 1)``, entries divided by ``2**bits - 1``), else its Presentation
        LUT Shape (INVERSE: ``1 - unit``).
    image : pydicom.dataset.Dataset
        The image: without either (or without a presentation state) MONOCHROME1 is
        inverted.

    Returns
    -------
    numpy.ndarray
        P-values in ``[0, 1]``, 1 white.
    """
    state = Dataset() if presentation is None else presentation
    sequence = state.get("PresentationLUTSequence")
    if sequence:
        item = sequence[0]
        table = lut_entries(item).astype(np.float64)
        index = np.rint(unit * (len(table) - 1)).astype(np.int64)
        return table[index] / float(2 ** int(item.LUTDescriptor[2]) - 1)
    shape = str(state.get("PresentationLUTShape") or "").upper()
    if not shape:
        mono1 = str(image.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
        shape = "INVERSE" if mono1 else "IDENTITY"
    return 1.0 - unit if shape == "INVERSE" else unit


def _windowing(
    values: npt.NDArray[np.float64], window: Window, output_range: Dataset | None
) -> npt.NDArray[np.float64]:
    """Apply pydicom's ``apply_windowing``, its output over the range ``output_range`` gives.

    None: 0..1 exactly (one unsigned bit stored, no Modality LUT: ``(x - c) / w + 0.5`` times 1
    plus 0), so nothing is scaled or rounded again.
    """
    ds = Dataset()
    if output_range is None:
        ds.PhotometricInterpretation, ds.BitsStored, ds.PixelRepresentation = "MONOCHROME2", 1, 0
    else:
        for keyword in _OUTPUT_RANGE:
            if keyword in output_range:
                ds.add(copy.copy(output_range[keyword]))  # pydicom writes back what it reads
    ds.WindowCenter, ds.WindowWidth = window.center, window.width
    ds.VOILUTFunction = window.function
    return np.asarray(apply_windowing(values, ds), dtype=np.float64)


def _lookup(values: npt.NDArray[np.float64], lut: Lut) -> npt.NDArray[np.float64]:
    """Look values up in a VOI LUT (rounded; outside its domain, its end entries)."""
    # pydicom casts float input and out-of-range indices unsafely: round and clip first.
    first = lut.first_mapped
    index = np.clip(np.rint(values), first, first + len(lut.data) - 1).astype(np.int64)
    if not _pydicom_reads(lut):
        return lut.data[index - first].astype(np.float64)
    carrier = Dataset()
    table = Dataset()
    table.add(lut.item["LUTDescriptor"])
    table.add(lut.item["LUTData"])
    carrier.VOILUTSequence = [table]
    carrier.set_original_encoding(False, lut.item.original_encoding[1] is not False)
    return np.asarray(apply_voi_lut(index, carrier), dtype=np.float64)


def _pydicom_reads(lut: Lut) -> bool:
    """Whether pydicom 3.0's ``apply_voi_lut`` reads a table right (module docstring)."""
    if lut.bits == 8:
        return len(lut.data) <= 256 and len(lut_words(lut.item)) >= len(lut.data)
    return 10 <= lut.bits <= 16


@contextlib.contextmanager
def _invalid_header(image: Dataset) -> Iterator[None]:
    try:
        yield
    except (ValueError, KeyError, IndexError, TypeError, NotImplementedError) as exc:
        text = " ".join(str(exc).split())[:500] or type(exc).__name__
        raise UnsupportedImageError(
            ImageRefusal.INVALID_HEADER,
            f"cannot apply the Modality/VOI LUT: {text}",
            sop_instance_uid=str(image.get("SOPInstanceUID", "")) or None,
        ) from exc


def _first(value: Any) -> Any:
    if isinstance(value, MultiValue | list | tuple):
        return value[0] if len(value) else None
    return value
