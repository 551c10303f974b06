"""Watching a C-STORE data set while pynetdicom writes it: size limit, disk space, PDU size.

With :data:`pynetdicom._config.STORE_RECV_CHUNKED_DATASET` pynetdicom writes each received
data fragment to a temporary file and calls the C-STORE handler once the data set is
complete; it has no size limit of its own. :class:`DataSetWatch` is bound to
``evt.EVT_DATA_RECV``, which pynetdicom triggers with each whole PDU *before* it decodes it,
in the thread that then writes its fragments. It reads the PDU's framing (PS3.8 9.3.5, E.2):

* the last command fragment of a C-STORE request with a data set starts a data set: the
  association's temporary folder is created (pynetdicom creates the file there while
  decoding this same PDU), and the disk's free space is checked;
* data fragments are counted; past ``dicom.max_dataset_bytes``, or when the disk goes below
  the watermark (checked every :data:`SPACE_CHECK_BYTES`), the data set is refused and the
  file cut to nothing before each further PDU is written, so a refused data set never
  holds more than one PDU on disk (pynetdicom writes on at its offset into a sparse file);
  the handler answers with the refusal once the message is complete;
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

from pynetdicom import evt

from spinexr.node.errors import IngestError

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
        Raises :class:`IngestError` (``out_of_resources``) below the free-space watermark.
    """

    def __init__(
        self, folder: Path, *, limit: int, max_pdu: int, check_space: Callable[[], None]
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
                self._data(stop - start)
            off = off + 4 + max(length, 2)

    def _start(self, command: bytes) -> None:
        self.receiving = is_store_with_data(command)
        self.size = 0
        self.refusal = None
        self._next_space_check = SPACE_CHECK_BYTES
        if self.receiving:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._space()

    def _data(self, n: int) -> None:
        self.size += n
        if self.refusal is None:
            if self.size > self.limit:
                self.refuse(IngestError("too_large", f"dataset larger than the limit {self.limit}"))
            elif self.size >= self._next_space_check:
                self._next_space_check += SPACE_CHECK_BYTES
                self._space()
        if self.refusal is not None:
            self._empty_file()

    def _space(self) -> None:
        try:
            self._check_space()
        except IngestError as exc:
            self.refuse(exc)

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

    def finish(self) -> IngestError | None:
        """End the data set (the handler has it): its refusal, if any.

        Returns
        -------
        IngestError or None
            Why it was refused while it was received.
        """
        refusal, self.refusal = self.refusal, None
        self.receiving = False
        return refusal

    def clear(self) -> None:
        """Delete the temporary folder and whatever is left in it."""
        shutil.rmtree(self.folder, ignore_errors=True)
