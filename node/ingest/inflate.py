"""Deflated data sets inflated into the spool in bounded pieces, never whole in memory.

pydicom reads a Deflated Explicit VR Little Endian file by inflating the whole data set into
one bytes object (and a second copy in its buffer): a 211 KB upload that inflates to 200 MB
made the receiving process grow by 400 MB. Ingest therefore inflates such a file itself,
with :class:`zlib.decompressobj` in pieces of at most :data:`PIECE` bytes, into a new spool
file in Explicit VR Little Endian (the encoding deflate wraps, PS3.5 A.5, so nothing is
lost), refusing it as soon as the inflated size passes the data-set limit. The rest of
ingest, and the worker, then read an ordinary file. Memory per association for this step:
one compressed and one inflated piece (2 × 1 MiB) plus zlib's 32 KiB window.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from spinexr.node.errors import IngestError

PIECE = 2**20
"""Largest compressed piece read and largest inflated piece produced at once."""

__all__ = ["FileMeta", "inflated_parts", "read_file_meta"]


@dataclass(frozen=True)
class FileMeta:
    """A Part-10 file's preamble and meta group, and where its data set begins."""

    preamble: bytes
    meta: FileMetaDataset
    dataset_offset: int

    @property
    def deflated(self) -> bool:
        """Whether the data set is Deflated Explicit VR Little Endian."""
        return str(getattr(self.meta, "TransferSyntaxUID", "")) == DeflatedExplicitVRLittleEndian


def _not_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag >> 16 != 0x0002


def read_file_meta(fileobj: io.BufferedIOBase) -> FileMeta:
    """Read the preamble and file meta group from the start of ``fileobj``.

    Parameters
    ----------
    fileobj : file-like
        The file, positioned at its start.

    Returns
    -------
    FileMeta
        Preamble, meta group and the data set's offset.

    Raises
    ------
    IngestError
        ``unparseable`` without a DICM prefix or with a broken meta group.
    """
    try:
        preamble = read_preamble(fileobj, False) or b""  # type: ignore[arg-type]
        meta = read_dataset(fileobj, False, True, stop_when=_not_meta)  # type: ignore[arg-type]
        for _ in meta:  # convert every value now: an unknown VR raises here, not on use
            pass
    except (
        InvalidDicomError,
        ValueError,
        TypeError,
        KeyError,
        EOFError,
        OSError,
        struct.error,
        NotImplementedError,  # an unknown VR
        BytesLengthException,  # a length that does not fit the VR
    ) as exc:
        raise IngestError(
            "unparseable", f"file meta cannot be parsed: {type(exc).__name__}"
        ) from exc
    return FileMeta(preamble, FileMetaDataset(meta), fileobj.tell())


def inflated_parts(path: Path, file_meta: FileMeta, *, limit: int) -> Iterator[bytes]:
    """Yield a deflated file re-encoded as Explicit VR Little Endian, piece by piece.

    Parameters
    ----------
    path : Path
        The received (deflated) file, completely written.
    file_meta : FileMeta
        Its meta group (:func:`read_file_meta`).
    limit : int
        Largest inflated file accepted (``dicom.max_dataset_bytes``).

    Yields
    ------
    bytes
        Preamble, ``DICM``, the new meta group (Transfer Syntax Explicit VR Little Endian),
        then the inflated data set in pieces of at most :data:`PIECE` bytes.

    Raises
    ------
    IngestError
        ``too_large`` once the inflated file passes ``limit`` (nothing more is inflated);
        ``truncated`` when the deflate stream ends early; ``unparseable`` when it is not a
        deflate stream.
    """
    meta = FileMetaDataset(file_meta.meta)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    header = DicomBytesIO()
    write_file_meta_info(header, meta, enforce_standard=True)
    preamble = file_meta.preamble or bytes(128)
    first = preamble + b"DICM" + header.getvalue()
    yield first
    produced = len(first)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        offset = file_meta.dataset_offset
        while not inflater.eof:
            data = inflater.unconsumed_tail
            if not data:
                data = os.pread(fd, PIECE, offset)
                offset += len(data)
            try:
                piece = inflater.decompress(data, PIECE)
            except zlib.error as exc:
                raise IngestError(
                    "unparseable", "deflated data set is not a deflate stream"
                ) from exc
            if not data and not piece:
                raise IngestError("truncated", "deflated data set ends before its stream does")
            produced += len(piece)
            if produced > limit:
                raise IngestError(
                    "too_large", f"inflated data set exceeds the limit of {limit} bytes"
                )
            if piece:
                yield piece
    finally:
        os.close(fd)
