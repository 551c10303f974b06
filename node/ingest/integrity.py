"""Whether a received data set is complete: every element inside the file, the pixels whole.

pydicom reads leniently: a file cut short inside an element or inside its Pixel Data parses
with a warning, or with nothing at all, and the damage shows only when the pixels are
decoded — long after the sender was told "stored". Ingest therefore checks, from the element
positions and lengths pydicom reports (:attr:`pydicom.dataelem.RawDataElement.value_tell`),
that the file holds every element it declares. Pixel Data gets two checks pydicom has no
function for (it decodes or it does not, but never says a stream is merely short):

- native transfer syntaxes: at least Rows × Columns × Samples × Frames × Bits Allocated / 8
  bytes;
- encapsulated ones: the item structure (Basic Offset Table, fragments, Sequence Delimiter)
  lies wholly inside the file, with at least one fragment per frame. The walk reads only
  the 8-byte item headers.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from spinexr.node.errors import IngestError

PIXEL_DATA = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM = 0xFFFEE000
SEQUENCE_DELIMITER = 0xFFFEE0DD

__all__ = ["check_complete", "native_pixel_bytes", "pixel_samples"]


def pixel_samples(ds: Dataset) -> tuple[int, int]:
    """Return the number of samples (Rows × Columns × Samples × Frames) and Bits Allocated.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The data set (its Image Pixel module; absent values count as 0 rows/columns/bits,
        1 frame, 1 sample).

    Returns
    -------
    tuple of int
        Samples in all frames, and Bits Allocated.

    Raises
    ------
    IngestError
        ``unparseable`` when the Image Pixel module's values are not numbers.
    """
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 0) or 0)
    except (TypeError, ValueError) as exc:
        raise IngestError("unparseable", "image pixel module values are not numbers") from exc
    return rows * cols * samples * frames, bits


def native_pixel_bytes(ds: Dataset) -> int:
    """Return the bytes uncompressed Pixel Data must hold (PS3.5 8.1.1), 0 if not stated.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The data set (its Image Pixel module).

    Returns
    -------
    int
        ``ceil(Rows × Columns × SamplesPerPixel × NumberOfFrames × BitsAllocated / 8)``.
    """
    count, bits = pixel_samples(ds)
    return (count * bits + 7) // 8


def _truncated(message: str) -> IngestError:
    return IngestError("truncated", message)


def _check_fragments(fp: BinaryIO, start: int, size: int, frames: int, little: bool) -> None:
    """Walk the encapsulated items from ``start`` (the value of Pixel Data) to the delimiter."""
    fmt = "<HHL" if little else ">HHL"
    pos, items = start, 0
    while True:
        if pos + 8 > size:
            raise _truncated(
                f"encapsulated pixel data ends inside item {items} (no sequence delimiter)"
            )
        fp.seek(pos)
        group, element, length = struct.unpack(fmt, fp.read(8))
        tag = group << 16 | element
        pos += 8
        if tag == SEQUENCE_DELIMITER:
            break
        if tag != ITEM or length == UNDEFINED_LENGTH:
            raise IngestError(
                "unparseable", f"encapsulated pixel data: unexpected item (tag {tag:08X})"
            )
        if pos + length > size:
            raise _truncated(f"encapsulated pixel data item {items} ends past the end of file")
        pos += length
        items += 1
    fragments = items - 1  # the first item is the Basic Offset Table
    if fragments < frames:
        raise _truncated(
            f"encapsulated pixel data has {fragments} fragment(s) for {frames} frame(s)"
        )


def check_complete(
    fp: BinaryIO, ds: Dataset, size: int, transfer_syntax: str, *, requires_pixels: bool
) -> None:
    """Raise unless every element of ``ds`` lies inside the file and its pixels are whole.

    Parameters
    ----------
    fp : file-like
        The file ``ds`` was read from (seekable; only item headers are read from it).
    ds : pydicom.dataset.Dataset
        The data set as read with a ``defer_size`` (Pixel Data not accessed, so its element
        is still raw).
    size : int
        The file's size in bytes.
    transfer_syntax : str
        The file's Transfer Syntax UID.
    requires_pixels : bool
        Whether the SOP class is an image (Pixel Data is Type 1).

    Raises
    ------
    IngestError
        ``truncated`` for a file cut short (an element or the pixel data ends past the end
        of file, fewer pixel bytes than the image needs, encapsulated items cut off);
        ``unparseable`` for a broken encapsulated item structure.
    """
    for tag in ds.keys():  # noqa: SIM118 - the tags, not the (converted) elements
        elem = ds.get_item(tag, keep_deferred=True)
        if isinstance(elem, RawDataElement) and elem.length != UNDEFINED_LENGTH:
            end = elem.value_tell + elem.length
            if end > size:
                raise _truncated(
                    f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) ends at byte {end} "
                    f"of a {size}-byte file"
                )
    if PIXEL_DATA not in ds:
        if requires_pixels:
            raise _truncated("image without Pixel Data")
        return
    pixels = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if not isinstance(pixels, RawDataElement):  # already converted: the value is in memory
        return
    syntax = UID(transfer_syntax)
    if pixels.length == UNDEFINED_LENGTH:
        frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
        _check_fragments(fp, pixels.value_tell, size, frames, syntax.is_little_endian)
        return
    if syntax.is_encapsulated:
        raise IngestError("unparseable", "compressed transfer syntax with a native Pixel Data")
    needed = native_pixel_bytes(ds)
    if pixels.length < needed:
        raise _truncated(f"pixel data has {pixels.length} bytes; the image needs {needed}")
