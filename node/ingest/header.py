"""Reading and checking the header of a received instance (never its pixels)."""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.tag import BaseTag

from spinexr.node.errors import IngestError
from spinexr.node.ingest.inflate import read_file_meta
from spinexr.node.ingest.integrity import check_complete, pixel_samples
from spinexr.node.sopclasses import ANALYSABLE_SOP_CLASSES, SECONDARY_CAPTURE

_BROKEN_STREAM = ("End of file reached", "Expected explicit VR", "Unknown VR", "Unexpected")
UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(value: str) -> bool:
    """Return whether ``value`` is a syntactically valid DICOM UID (PS3.5 9.1)."""
    return 0 < len(value) <= 64 and bool(UID_RE.match(value))


@dataclass(frozen=True)
class InstanceHeader:
    """The attributes ingest needs; nothing here is logged except UIDs."""

    sop_class_uid: str
    transfer_syntax_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    body_part_examined: str
    study_description: str
    accession_number: str
    manufacturer: str
    software_versions: str
    expected_pixel_bytes: int
    series_description: str = ""
    protocol_name: str = ""


_UNDEFINED_LENGTH = 0xFFFFFFFF
IMAGE_SOP_CLASSES = frozenset((*ANALYSABLE_SOP_CLASSES, SECONDARY_CAPTURE))
"""SOP classes whose Pixel Data is Type 1."""
DEFER_SIZE = 2**20
"""Values longer than this (the pixels, large private blobs) are skipped when reading a
header: their positions and lengths are checked, their bytes are not read."""


PARSE_ERRORS = (
    InvalidDicomError,
    ValueError,
    TypeError,
    KeyError,
    struct.error,
    NotImplementedError,  # an unknown VR, found when an element is converted
    BytesLengthException,  # a value whose length does not fit its VR
    zlib.error,  # a deflated data set that does not inflate
    OverflowError,
)
"""What pydicom raises on a malformed data set, while reading it or converting its values
(``OSError`` is caught only around the read itself: later, it is the disk's)."""


class SizedReader(io.BufferedReader):
    """A buffered reader whose reads never ask for more than the file has left.

    pydicom reads a value with ``read(length)`` for the length the element declares, and a
    buffered reader allocates that many bytes before it reads: a 1 KiB file declaring a
    4 GiB value would reserve 4 GiB. Capped at what is left, memory stays bounded by the
    file's size (itself bounded by ``dicom.max_dataset_bytes``).

    Parameters
    ----------
    raw : io.RawIOBase
        The file.
    size : int
        Its size in bytes.
    """

    def __init__(self, raw: io.RawIOBase, size: int) -> None:
        super().__init__(raw, buffer_size=2**16)
        self.size = size

    def read(self, n: int | None = -1, /) -> bytes:
        """Read up to ``n`` bytes, never asking for more than the file has left."""
        if n is not None and n > 0:
            n = min(n, max(0, self.size - self.tell()))
        return super().read(n)


def _check_deferred(ds: Dataset, size: int) -> None:
    """Refuse a data set with a deferred value declared past the file's ``size``.

    Every element of the level is checked before any is converted: converting one element
    may read another (pydicom reads Pixel Representation when it converts some elements),
    and a deferred read reserves the declared length first (4 GiB from a 1 KiB file).
    """
    for tag in list(ds.keys()):
        elem = ds.get_item(tag, keep_deferred=True)  # a deferred value stays unread
        value_tell = getattr(elem, "value_tell", None)
        length = getattr(elem, "length", 0)
        deferred = elem.value is None and length != _UNDEFINED_LENGTH
        if deferred and value_tell is not None and value_tell + length > size:
            raise EOFError(f"a value of {length} bytes goes past the end of the file")


def _may_be_sequence(ds: Dataset, tag: BaseTag) -> bool:
    """Whether an element can be a sequence, decided without converting it when possible."""
    elem = ds.get_item(tag, keep_deferred=True)  # a deferred value stays unread
    vr = elem.VR
    if vr == "SQ":
        return True
    if vr is not None and vr != "UN":
        return False
    # Implicit VR (or UN): pydicom makes an element a sequence from the dictionary or
    # from an undefined length; anything else cannot hold items.
    if getattr(elem, "length", 0) == _UNDEFINED_LENGTH:
        return True
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return True  # private or unknown: let pydicom convert it


def _depth(ds: Dataset, limit: int, size: int, level: int = 1) -> int:
    deepest = level - 1
    _check_deferred(ds, size)
    for tag in list(ds.keys()):
        if not _may_be_sequence(ds, tag):
            continue
        elem = ds[tag]
        if elem.VR == "SQ":
            if level > limit:
                return level
            for item in elem.value:
                deepest = max(deepest, _depth(item, limit, size, level + 1))
                if deepest > limit:
                    return deepest
    return max(deepest, level - 1)


class HeadThenFile(io.RawIOBase):
    """A file read from its first bytes in memory, and from the file only beyond them.

    Parameters
    ----------
    head : bytes
        The file's first bytes.
    path : Path
        The file, opened only when a read goes past ``head``.
    size : int
        The file's size.
    before_file : callable, optional
        Called once before the file is opened (e.g. to wait until it is written).
    """

    def __init__(
        self, head: bytes, path: Path, size: int, before_file: Callable[[], None] | None = None
    ) -> None:
        super().__init__()
        self._head = head
        self._path = path
        self._size = size
        self._before = before_file
        self._pos = 0
        self._fd = -1

    @property
    def name(self) -> str:
        """The file's path (pydicom names the data set's source by it)."""
        return str(self._path)

    def readable(self) -> bool:
        """Return True."""
        return True

    def seekable(self) -> bool:
        """Return True."""
        return True

    def tell(self) -> int:
        """Return the position."""
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move the position (as :meth:`io.IOBase.seek`)."""
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        """Read into ``buffer`` from the head, or from the file beyond it."""
        view = memoryview(buffer).cast("B")
        if self._pos >= self._size:
            return 0
        if self._pos < len(self._head):
            n = min(len(view), len(self._head) - self._pos)
            view[:n] = self._head[self._pos : self._pos + n]
        else:
            if self._fd < 0:
                if self._before is not None:
                    self._before()
                self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
            n = os.preadv(self._fd, [view], self._pos)
        self._pos += n
        return n

    def close(self) -> None:
        """Close the file if it was opened."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
        super().close()


def _read_dataset(fileobj: BinaryIO, max_sequence_depth: int, size: int) -> Dataset:
    """Read the whole structure to the end of the file (values over DEFER_SIZE skipped)."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(fileobj, defer_size=DEFER_SIZE)
        # pydicom reads truncated or mis-encoded data leniently and only warns.
        broken = [w for w in caught if any(s in str(w.message) for s in _BROKEN_STREAM)]
        if broken:
            message = str(broken[0].message)
            raise EOFError(message) if "End of file" in message else ValueError(message)
        depth = _depth(ds, max_sequence_depth, size)
    except EOFError as exc:
        raise IngestError("truncated", "the data set ends before its last element does") from exc
    except (*PARSE_ERRORS, OSError) as exc:
        raise IngestError("unparseable", f"dataset cannot be parsed: {type(exc).__name__}") from exc
    except RecursionError as exc:
        raise IngestError("too_deep", "sequence nesting exceeds the parser's limit") from exc
    if depth > max_sequence_depth:
        raise IngestError("too_deep", f"sequence nesting {depth} > limit {max_sequence_depth}")
    return ds


def decoded_pixel_bytes(ds: Dataset) -> int:
    """Return the bytes the pixels take once decoded (at least one byte per sample).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The data set's header.

    Returns
    -------
    int
        ``Rows × Columns × Frames × Samples × max(BitsAllocated, 8) / 8``: the guard against
        decompression bombs, before anything decodes the pixels.

    Raises
    ------
    IngestError
        ``unparseable`` when the Image Pixel module's values are not numbers.
    """
    count, bits = pixel_samples(ds)
    return count * max(bits, 8) // 8


def read_header(
    path: Path,
    *,
    max_sequence_depth: int,
    max_decompressed_bytes: int,
    head: bytes = b"",
    size: int = 0,
    before_file: Callable[[], None] | None = None,
) -> InstanceHeader:
    """Parse a Part-10 file's structure to its end (pixel values skipped) and check it.

    Parameters
    ----------
    path : Path
        The file as received.
    max_sequence_depth : int
        Deepest sequence nesting accepted.
    max_decompressed_bytes : int
        Largest pixel data (Rows × Columns × Frames × Samples × BitsAllocated / 8) accepted;
        guards against decompression bombs before anything decodes the pixels.
    head : bytes, optional
        The file's first bytes, already in memory: the file itself is read only if the
        header goes on past them (see :class:`HeadThenFile`).
    size : int, optional
        The file's size (with ``head``).
    before_file : callable, optional
        With ``head``: called before the file is first read.

    Returns
    -------
    InstanceHeader
        The attributes ingest uses.

    Raises
    ------
    IngestError
        ``reason`` ``"unparseable"``, ``"truncated"`` (the file ends before an element or its
        pixels do, see :mod:`.integrity`), ``"missing_uid"``, ``"invalid_uid"``,
        ``"too_deep"`` or ``"too_large"``.
    """
    if not head:
        size = path.stat().st_size
    raw = HeadThenFile(head, path, size, before_file)
    try:
        return _checked_header(raw, size, max_sequence_depth, max_decompressed_bytes)
    except PARSE_ERRORS as exc:  # a value pydicom converts only when it is used
        raise IngestError("unparseable", f"dataset cannot be parsed: {type(exc).__name__}") from exc


def _checked_header(
    raw: HeadThenFile, size: int, max_sequence_depth: int, max_decompressed_bytes: int
) -> InstanceHeader:
    with SizedReader(raw, size) as fileobj:
        read_file_meta(fileobj)  # a broken preamble or meta group is "unparseable"
        fileobj.seek(0)
        ds = _read_dataset(fileobj, max_sequence_depth, size)
        expected = decoded_pixel_bytes(ds)
        if expected > max_decompressed_bytes:
            raise IngestError(
                "too_large",
                f"pixel data would decode to {expected} bytes > limit {max_decompressed_bytes}",
            )
        syntax = str(getattr(ds.file_meta, "TransferSyntaxUID", "") or "")
        sop_class = str(
            ds.get("SOPClassUID", "") or getattr(ds.file_meta, "MediaStorageSOPClassUID", "")
        )
        check_complete(fileobj, ds, size, syntax, requires_pixels=sop_class in IMAGE_SOP_CLASSES)

    def text(keyword: str) -> str:
        value = ds.get(keyword, "")
        return "" if value is None else str(value).strip()

    header = InstanceHeader(
        sop_class_uid=text("SOPClassUID")
        or str(getattr(ds.file_meta, "MediaStorageSOPClassUID", "") or ""),
        transfer_syntax_uid=str(getattr(ds.file_meta, "TransferSyntaxUID", "") or ""),
        sop_instance_uid=text("SOPInstanceUID"),
        study_instance_uid=text("StudyInstanceUID"),
        series_instance_uid=text("SeriesInstanceUID"),
        modality=text("Modality").upper(),
        body_part_examined=text("BodyPartExamined").upper(),
        study_description=text("StudyDescription"),
        accession_number=text("AccessionNumber")[:16],
        manufacturer=text("Manufacturer"),
        software_versions=text("SoftwareVersions"),
        expected_pixel_bytes=expected,
        series_description=text("SeriesDescription"),
        protocol_name=text("ProtocolName"),
    )
    for name in ("sop_instance_uid", "study_instance_uid", "series_instance_uid"):
        value = getattr(header, name)
        if not value:
            raise IngestError("missing_uid", f"{name} is missing")
        if not is_valid_uid(value):
            # Never logged or echoed: an invalid value may be anything the sender put there.
            raise IngestError(
                "invalid_uid",
                f"{name} is not a valid UID ({len(value)} characters; PS3.5 9.1 allows "
                "at most 64 of digits and dots, no empty component, no leading zero)",
            )
    return header
