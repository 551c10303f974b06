"""Watching a C-STORE data set while pynetdicom writes it: size limit, disk space, PDU size.

With :data:`pynetdicom._config.STORE_RECV_CHUNKED_DATASET` pynetdicom writes each received
data fragment to a temporary file and calls the C-STORE handler once the data set is
complete; it has no size limit of its own. :class:`DataSetWatch` is bound to
``evt.EVT_DATA_RECV``, which pynetdicom triggers with each whole PDU *before* it decodes it,
in the thread that then writes its fragments. It reads the PDU's framing (PS3.8 9.3.5, E.2):

* the last command fragment of a C-STORE request with a data set starts a data set: the
  association's temporary folder is created (pynetdicom creates the file there while
  decoding this same PDU), and the disk's free space is checked;
* data fragments are counted; past ``dicom.max_dataset_bytes``, or when the next PDU would
  take the disk below the watermark (checked every :data:`SPACE_CHECK_BYTES` while there is
  room, before every PDU once less than twice that is left), the data set is refused and the
  file cut to nothing before each further PDU is written, so a refused data set never
  holds more than one PDU on disk (pynetdicom writes on at its offset into a sparse file);
  the handler answers with the refusal once the message is complete;
* the data fragments are hashed as they arrive, and the file's first bytes kept
  (:class:`FileFollower`), so the handler reads nothing back;
* a PDU longer than the node accepts closes the connection (after pynetdicom has read it;
  see ``docs/pynetdicom-patch-proposal.md``).

The folder belongs to this association process alone (see
:mod:`spinexr.node.dimse.association`), so the file in it is this data set's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

from blake3 import blake3
from pynetdicom import evt

from spinexr.node.errors import IngestError
from spinexr.node.ingest.spoolwriter import HASH_PREFIX, HEAD, SpooledFile, received_file

logger = logging.getLogger(__name__)

P_DATA_TF = 0x04
C_STORE_RQ = 0x0001
NO_DATA_SET = 0x0101
SPACE_CHECK_BYTES = 16 * 2**20
"""Data bytes between two free-space checks of one data set."""
_COMMAND_FIELD = 0x00000100
_DATA_SET_TYPE = 0x00000800


def is_store_with_data(command: bytes) -> bool:
    """Whether an encoded command set is a C-STORE request followed by a data set.

    Parameters
    ----------
    command : bytes
        The command set, Implicit VR Little Endian (PS3.7 6.3.1).

    Returns
    -------
    bool
        ``True`` for a C-STORE-RQ whose Command Data Set Type is not 0x0101.
    """
    fields: dict[int, int] = {}
    off = 0
    while off + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHL", command, off)
        off += 8
        tag = group << 16 | element
        if tag in (_COMMAND_FIELD, _DATA_SET_TYPE) and length == 2 and off + 2 <= len(command):
            fields[tag] = struct.unpack_from("<H", command, off)[0]
        off += length
    return fields.get(_COMMAND_FIELD) == C_STORE_RQ and fields.get(_DATA_SET_TYPE) != NO_DATA_SET


class FileFollower:
    """The data set's file as pynetdicom writes it: its content hash and first bytes.

    pynetdicom writes the preamble and file meta when the command arrives and flushes them
    with the first data fragment; from then on the file holds the meta and every fragment
    before the PDU being handled. The meta is read back from the file once (a few hundred
    bytes); the fragments are hashed from the PDUs.

    Parameters
    ----------
    folder : Path
        Where pynetdicom writes the file (it is the folder's one file).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fd = -1
        self._meta: bytes | None = None
        self._pending: list[memoryview] = []
        self._digest = blake3()
        self._head = bytearray()

    def _take(self, data: bytes | memoryview) -> None:
        self._digest.update(data)
        if len(self._head) < HEAD:
            self._head += data[: HEAD - len(self._head)]

    def _open(self, path: Path | None = None) -> bool:
        if self._fd < 0:
            if path is None:
                files = list(self.folder.iterdir()) if self.folder.is_dir() else []
                if len(files) != 1:
                    return False
                path = files[0]
            try:
                self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return False
        return True

    def before_pdu(self, received: int) -> None:
        """Read the file meta once it is in the file (``received`` data bytes are, now)."""
        if self._meta is not None or not self._open():
            return
        in_file = os.fstat(self._fd).st_size
        if in_file > received:
            self._read_meta(in_file - received)

    def _read_meta(self, length: int) -> None:
        self._meta = os.pread(self._fd, length, 0)
        self._take(self._meta)
        for view in self._pending:
            self._take(view)
        self._pending.clear()

    def fragment(self, data: memoryview) -> None:
        """Hash a data fragment (kept until the meta is known)."""
        if self._meta is None:
            self._pending.append(data)
        else:
            self._take(data)

    def result(self, path: Path, received: int) -> SpooledFile:
        """Describe the complete file (read back only if it is not as expected).

        Parameters
        ----------
        path : Path
            The file (``event.dataset_path``).
        received : int
            Data bytes received.

        Returns
        -------
        SpooledFile
            Its size, content hash and first bytes; not synced.
        """
        if not self._open(path):
            raise FileNotFoundError(path)
        size = os.fstat(self._fd).st_size
        if self._meta is None and size >= received:
            self._read_meta(size - received)
        if self._meta is None or size != len(self._meta) + received:
            logger.warning("received file is not as announced: hashed from the disk")
            return received_file(path)
        return SpooledFile(
            path, size, HASH_PREFIX + self._digest.hexdigest(), head=bytes(self._head)
        )

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class DataSetWatch:
    """The C-STORE data set being received on one association.

    Parameters
    ----------
    folder : Path
        The association's temporary folder (pynetdicom's ``tempfile.tempdir``).
    limit : int
        Largest data set accepted (``dicom.max_dataset_bytes``).
    max_pdu : int
        Longest PDU accepted (bytes after the 6-byte header).
    check_space : callable
        ``check_space(need)`` returns the room above the free-space watermark, or raises
        :class:`IngestError` (``out_of_resources``) when ``need`` more bytes do not fit.
    """

    def __init__(
        self, folder: Path, *, limit: int, max_pdu: int, check_space: Callable[[int], int]
    ) -> None:
        self.folder = folder
        self.limit = limit
        self.max_pdu = max_pdu
        self._check_space = check_space
        self._command = bytearray()
        self.receiving = False
        """Whether a C-STORE data set is being received."""
        self.size = 0
        """Data bytes of it received so far."""
        self.refusal: IngestError | None = None
        """Why it is refused, once it is."""
        self._next_space_check = 0
        self._file = FileFollower(folder)

    def on_data(self, event: evt.Event) -> None:
        """``evt.EVT_DATA_RECV`` handler: one whole PDU, before pynetdicom decodes it."""
        pdu: bytes = event.data
        if len(pdu) - 6 > self.max_pdu:
            logger.warning(
                "closing connection: peer sent a %d-byte PDU, limit %d", len(pdu) - 6, self.max_pdu
            )
            self.refuse(IngestError("too_large", "PDU longer than the negotiated maximum"))
            transport = event.assoc.dul.socket
            if transport is not None:
                transport.close()
            return
        if pdu[0] == P_DATA_TF:
            self.feed(pdu)

    def feed(self, pdu: bytes) -> None:
        """Follow the presentation data values of one P-DATA-TF PDU.

        Parameters
        ----------
        pdu : bytes
            The whole PDU, header included.
        """
        if self.receiving and self.refusal is None:
            self._file.before_pdu(self.size)
            if self.size + len(pdu) >= self._next_space_check:
                self._space(len(pdu))
        view = memoryview(pdu)
        off, end = 6, len(pdu)
        while off + 6 <= end:
            (length,) = struct.unpack_from(">L", pdu, off)
            control = pdu[off + 5]
            start, stop = off + 6, min(off + 4 + length, end)
            if control & 0x01:  # a command fragment
                self._command += pdu[start:stop]
                if control & 0x02:
                    self._start(bytes(self._command))
                    self._command.clear()
            elif self.receiving:
                self._data(view[start:stop])
            off = off + 4 + max(length, 2)

    def _start(self, command: bytes) -> None:
        self.receiving = is_store_with_data(command)
        self.size = 0
        self.refusal = None
        self._next_space_check = 0
        self._file.close()
        self._file = FileFollower(self.folder)
        if self.receiving:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._space()

    def _data(self, fragment: memoryview) -> None:
        self.size += len(fragment)
        if self.refusal is None:
            self._file.fragment(fragment)
            if self.size > self.limit:
                self.refuse(IngestError("too_large", f"dataset larger than the limit {self.limit}"))
        if self.refusal is not None:
            self._empty_file()

    def _space(self, need: int = 0) -> None:
        """Refuse the data set unless ``need`` more bytes fit; plan the next check."""
        try:
            room = self._check_space(need)
        except IngestError as exc:
            self.refuse(exc)
            return
        # Half the room left, at most SPACE_CHECK_BYTES: near the floor, before every PDU.
        self._next_space_check = self.size + min(SPACE_CHECK_BYTES, (room - need) // 2)

    def refuse(self, refusal: IngestError) -> None:
        """Refuse the data set being received (its bytes are dropped from now on)."""
        if self.refusal is None:
            self.refusal = refusal
        self._empty_file()

    def _empty_file(self) -> None:
        """Cut the data set's file to nothing (pynetdicom writes on into a sparse file)."""
        try:
            files = list(self.folder.iterdir())
        except FileNotFoundError:
            return
        for path in files:
            with contextlib.suppress(OSError):  # gone meanwhile
                os.truncate(path, 0)

    def finish(self, path: Path) -> SpooledFile:
        """End the data set (the handler has it, in ``path``) and describe its file.

        Parameters
        ----------
        path : Path
            ``event.dataset_path``.

        Returns
        -------
        SpooledFile
            Size, content hash, first bytes.

        Raises
        ------
        IngestError
            Why it was refused while it was received.
        """
        refusal, self.refusal = self.refusal, None
        self.receiving = False
        if refusal is not None:
            raise refusal
        return self._file.result(path, self.size)

    def clear(self) -> None:
        """Delete the temporary folder and whatever is left in it."""
        self._file.close()
        shutil.rmtree(self.folder, ignore_errors=True)
