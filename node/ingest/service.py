"""The one ingest path shared by the SCP and STOW-RS.

Order of work for each instance: free-space check → bytes to a temporary file (hashed on the
way; the SCP streams each received fragment straight there) → a deflated data set inflated
into a new temporary file in bounded pieces → header parsed and the file checked complete →
loop prevention → rules → fsync → (one recording at a time, see :mod:`.recorder`) duplicate
check, database rows, atomic move into place, folder fsync, commit. Only then does the
caller answer success. Nothing slow (no pixel decoding, no inference) happens here.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable

from sqlalchemy.orm import Session, sessionmaker

from spinexr.node.errors import IngestError
from spinexr.node.ingest.header import HeadThenFile, read_header
from spinexr.node.ingest.inflate import inflated_parts, read_file_meta
from spinexr.node.ingest.recorder import Arrival, IngestResult, Outcome, Recorder
from spinexr.node.ingest.rules import decide, is_own_object
from spinexr.node.ingest.spool import Spool
from spinexr.node.ingest.spoolwriter import SpooledFile
from spinexr.node.settings import Settings
from spinexr.node.sopclasses import ANALYSABLE_SOP_CLASSES, OUTPUT_LIKE_SOP_CLASSES

SUPPORTED_SOP_CLASSES = frozenset(ANALYSABLE_SOP_CLASSES) | frozenset(OUTPUT_LIKE_SOP_CLASSES)

logger = logging.getLogger(__name__)

__all__ = ["SUPPORTED_SOP_CLASSES", "IngestResult", "IngestService", "Outcome"]


RESERVE_BYTES = 4 * 2**20
"""Free space the node never takes, whatever ``storage.min_free_mb`` says (room for the
database's journal and for the one PDU written after a data set is refused)."""


class IngestService:
    """Durable intake of received instances.

    Parameters
    ----------
    settings : Settings
        Storage limits, rules, UID root.
    sessions : sessionmaker
        Database sessions.
    spool : Spool
        Where files go.
    """

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], spool: Spool):
        self.settings = settings
        self.sessions = sessions
        self.spool = spool
        self._recorder = Recorder(settings, sessions, spool)

    def check_space(self, need: int = 0) -> int:
        """Raise ``out_of_resources`` unless ``need`` more bytes fit above the floor.

        The floor is the watermark ``storage.min_free_mb``, and never less than
        :data:`RESERVE_BYTES`: the database must still be able to commit, and the node
        refuses a data set before the disk is full rather than when a write fails.

        Parameters
        ----------
        need : int
            Bytes about to be written (0: only check the watermark).

        Returns
        -------
        int
            The room left above the floor, in bytes, before the ``need`` bytes.
        """
        floor = max(self.settings.storage.min_free_mb * 2**20, RESERVE_BYTES)
        free = self.spool.free_bytes()
        if free - floor < max(need, 0) or free < floor:
            raise IngestError(
                "out_of_resources",
                f"spool free space {free // 2**20} MiB is below the watermark "
                f"{-(-floor // 2**20)} MiB",
            )
        return free - floor

    def ingest(
        self,
        parts: Iterable[bytes | bytearray | memoryview],
        *,
        calling_ae: str,
        source: str,
        expected_study_uid: str | None = None,
    ) -> IngestResult:
        """Store one Part-10 file given as byte pieces.

        Parameters
        ----------
        parts : iterable of bytes or memoryview
            The file (preamble, file meta, dataset) in pieces.
        calling_ae : str
            The sender's AE title (``STOW-RS`` for HTTP).
        source : str
            ``dimse`` or ``stowrs``.
        expected_study_uid : str, optional
            STOW-RS to ``/studies/{study}``: instances of other studies are refused.

        Returns
        -------
        IngestResult
            The success outcome.

        Raises
        ------
        IngestError
            When the instance is refused; nothing is kept in that case.
        """
        self.check_space()
        spooled = self.spool.write_parts(parts)
        return self.ingest_spooled(
            spooled, calling_ae=calling_ae, source=source, expected_study_uid=expected_study_uid
        )

    def ingest_spooled(
        self,
        spooled: SpooledFile,
        *,
        calling_ae: str,
        source: str,
        expected_study_uid: str | None = None,
    ) -> IngestResult:
        """Check, sync and record a file already written to the spool's temporary area.

        The temporary file is consumed: moved into place on success, deleted otherwise.

        Parameters
        ----------
        spooled : SpooledFile
            From :meth:`Spool.write_parts`, or a C-STORE data set pynetdicom wrote
            (:func:`~spinexr.node.ingest.spoolwriter.received_file`).
        calling_ae : str
            The sender's AE title (``STOW-RS`` for HTTP).
        source : str
            ``dimse`` or ``stowrs``.
        expected_study_uid : str, optional
            STOW-RS to ``/studies/{study}``: instances of other studies are refused.

        Returns
        -------
        IngestResult
            The success outcome.

        Raises
        ------
        IngestError
            When the instance is refused; nothing is kept in that case.
        """
        pending = spooled
        try:
            cfg = self.settings.dicom
            spooled = pending = self._inflated(spooled)
            # From the file's first bytes in memory; the file is read only for a header
            # longer than that.
            header = read_header(
                spooled.tmp_path,
                max_sequence_depth=cfg.max_sequence_depth,
                max_decompressed_bytes=cfg.max_decompressed_bytes,
                head=spooled.head,
                size=spooled.size,
            )
            if header.sop_class_uid not in SUPPORTED_SOP_CLASSES:
                raise IngestError(
                    "unsupported_sop_class", f"SOP class {header.sop_class_uid} is not accepted"
                )
            if expected_study_uid is not None and header.study_instance_uid != expected_study_uid:
                raise IngestError("wrong_study", "instance belongs to another study")
            if spooled.size > cfg.max_dataset_bytes:
                raise IngestError(
                    "too_large", f"dataset of {spooled.size} bytes > limit {cfg.max_dataset_bytes}"
                )
            if is_own_object(header, self.settings):
                self.spool.discard(spooled)
                logger.info("dropped own object %s (loop prevention)", header.sop_instance_uid)
                return IngestResult(
                    Outcome.DROPPED_OWN,
                    header.sop_class_uid,
                    header.sop_instance_uid,
                    header.study_instance_uid,
                    "dropped: produced by this node",
                )
            decision = decide(header, calling_ae, self.settings)
            self.spool.sync(spooled)
        except BaseException:
            self.spool.discard(pending)
            raise
        # The recorder consumes the file from here on (moved into place or deleted).
        return self._recorder.record(Arrival(header, decision, spooled, calling_ae, source))

    def _inflated(self, spooled: SpooledFile) -> SpooledFile:
        """Return ``spooled``, or for a deflated data set its inflated copy (see :mod:`.inflate`).

        The received file is deleted once its copy exists; on a refusal both are gone.
        """
        raw = HeadThenFile(spooled.head, spooled.tmp_path, spooled.size)
        with io.BufferedReader(raw, buffer_size=2**12) as fileobj:
            file_meta = read_file_meta(fileobj)
        if not file_meta.deflated:
            return spooled
        try:
            return self.spool.write_parts(
                inflated_parts(
                    spooled.tmp_path, file_meta, limit=self.settings.dicom.max_dataset_bytes
                )
            )
        finally:
            self.spool.discard(spooled)
