"""Where the elements of a DICOM Part 10 file lie: a byte-level scan, no pydicom parsing.

The mutators need the offsets of tags, VRs, length fields and values (to truncate at an
element boundary, rewrite a length, swap a VR), including inside sequences, items and the
fragments of encapsulated Pixel Data, so that they can break exactly one thing at a time.
Only little-endian data sets are scanned (explicit or implicit VR), which is what the seeds
are.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from pydicom.datadict import dictionary_VR

PREAMBLE: Final = 128
UNDEFINED: Final = 0xFFFFFFFF
ITEM: Final = 0xFFFEE000
ITEM_DELIMITER: Final = 0xFFFEE00D
SEQUENCE_DELIMITER: Final = 0xFFFEE0DD
LONG_VRS: Final = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
"""Explicit VRs with a reserved field and a 4-byte length (PS3.5 7.1.2)."""
PIXEL_DATA: Final = 0x7FE00010


@dataclass(frozen=True)
class Element:
    """One element, item or delimiter as it lies in the file.

    Attributes
    ----------
    offset : int
        First byte of its tag.
    tag : int
        ``group << 16 | element``.
    vr : str
        Explicit VR, the dictionary VR for implicit data sets (``""`` when unknown), or
        ``""`` for items and delimiters.
    explicit : bool
        Whether the VR is written in the file.
    length_offset : int
        First byte of its length field.
    length_size : int
        2 or 4.
    length : int
        The declared value length (``UNDEFINED`` for undefined length).
    value_offset : int
        First byte of its value.
    depth : int
        0 at the top level of the data set (or the meta group), +1 inside each item.
    in_meta : bool
        Whether it is in the file meta group.
    """

    offset: int
    tag: int
    vr: str
    explicit: bool
    length_offset: int
    length_size: int
    length: int
    value_offset: int
    depth: int
    in_meta: bool

    @property
    def end(self) -> int:
        """One past its value (its value offset for undefined length)."""
        return self.value_offset + (0 if self.length == UNDEFINED else self.length)

    @property
    def is_item_or_delimiter(self) -> bool:
        """Whether it is an item, item delimiter or sequence delimiter."""
        return self.tag >> 16 == 0xFFFE


@dataclass(frozen=True)
class Layout:
    """The scan of one file.

    Attributes
    ----------
    meta_end : int
        First byte of the data set (after the file meta group).
    implicit : bool
        Whether the data set is implicit VR.
    elements : tuple of Element
        Every element, item and delimiter found, in file order.
    complete : bool
        Whether the scan reached the end of the file without an inconsistency.
    """

    meta_end: int
    implicit: bool
    elements: tuple[Element, ...]
    complete: bool

    def top(self) -> list[Element]:
        """Top-level data-set elements."""
        return [e for e in self.elements if not e.in_meta and e.depth == 0]

    def find(self, tag: int, *, meta: bool = False) -> Element | None:
        """Return the first top-level element with ``tag`` (in the meta group when ``meta``)."""
        for e in self.elements:
            if e.tag == tag and e.depth == 0 and e.in_meta == meta:
                return e
        return None


def _vr_of(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return ""


class _Scanner:
    def __init__(self, data: bytes, implicit: bool) -> None:
        self.data = data
        self.implicit = implicit
        self.out: list[Element] = []
        self.complete = True

    def element(self, pos: int, depth: int, implicit: bool, in_meta: bool) -> Element | None:
        data = self.data
        if pos + 8 > len(data):
            return None
        group, elem = struct.unpack_from("<HH", data, pos)
        tag = group << 16 | elem
        if group == 0xFFFE:
            (length,) = struct.unpack_from("<L", data, pos + 4)
            return Element(pos, tag, "", False, pos + 4, 4, length, pos + 8, depth, in_meta)
        if implicit:
            (length,) = struct.unpack_from("<L", data, pos + 4)
            return Element(
                pos, tag, _vr_of(tag), False, pos + 4, 4, length, pos + 8, depth, in_meta
            )
        vr = data[pos + 4 : pos + 6].decode("latin-1")
        if vr in LONG_VRS:
            if pos + 12 > len(data):
                return None
            (length,) = struct.unpack_from("<L", data, pos + 8)
            return Element(pos, tag, vr, True, pos + 8, 4, length, pos + 12, depth, in_meta)
        (length,) = struct.unpack_from("<H", data, pos + 6)
        return Element(pos, tag, vr, True, pos + 6, 2, length, pos + 8, depth, in_meta)

    def run(self, pos: int, end: int, depth: int, in_meta: bool = False) -> int:
        """Scan elements from ``pos`` to ``end`` (or a delimiter); return where it stopped."""
        while pos < end:
            if depth > 64:
                self.complete = False
                return end
            el = self.element(pos, depth, self.implicit and not in_meta, in_meta)
            if el is None:
                self.complete = False
                return end
            self.out.append(el)
            if el.tag in (ITEM_DELIMITER, SEQUENCE_DELIMITER):
                return el.value_offset
            if el.tag == ITEM:
                pos = self.items_body(el, depth)
                continue
            is_seq = el.vr == "SQ" or (el.vr in ("", "UN") and el.length == UNDEFINED)
            if el.tag == PIXEL_DATA and el.length == UNDEFINED:
                pos = self.run(el.value_offset, len(self.data), depth + 1, in_meta)
            elif is_seq:
                stop = len(self.data) if el.length == UNDEFINED else min(el.end, len(self.data))
                pos = self.run(el.value_offset, stop, depth + 1, in_meta)
            else:
                if el.length == UNDEFINED or el.end > len(self.data):
                    self.complete = False
                    return end
                pos = el.end
        return pos

    def items_body(self, item: Element, depth: int) -> int:
        # An item of a sequence holds a data set; a fragment of Pixel Data holds bytes.
        parent = next((e for e in reversed(self.out[:-1]) if e.depth == item.depth - 1), None)
        if parent is not None and parent.tag == PIXEL_DATA:
            if item.length == UNDEFINED:
                self.complete = False
                return len(self.data)
            return item.end
        stop = len(self.data) if item.length == UNDEFINED else min(item.end, len(self.data))
        return self.run(item.value_offset, stop, depth)


def scan(data: bytes) -> Layout:
    """Scan a Part 10 file (preamble, ``DICM``, meta group, little-endian data set).

    Parameters
    ----------
    data : bytes
        The file.

    Returns
    -------
    Layout
        Element offsets; ``complete`` is ``False`` when the bytes are inconsistent (the
        elements found up to there are still listed).
    """
    pos = PREAMBLE + 4 if data[PREAMBLE : PREAMBLE + 4] == b"DICM" else 0
    scanner = _Scanner(data, implicit=False)
    # The meta group: explicit VR little endian, group 0002, until the first other group.
    while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
        el = scanner.element(pos, 0, False, True)
        if el is None:
            break
        scanner.out.append(el)
        pos = el.end
    meta_end = pos
    syntax = b""
    for el in scanner.out:
        if el.tag == 0x00020010:
            syntax = data[el.value_offset : el.end].rstrip(b"\x00 ")
    implicit = syntax == b"1.2.840.10008.1.2"
    scanner.implicit = implicit
    scanner.run(meta_end, len(data), 0)
    return Layout(meta_end, implicit, tuple(scanner.out), scanner.complete)
