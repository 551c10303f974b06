"""The one ingest path shared by the SCP and STOW-RS.

Order of work for each instance: free-space check → bytes to a temporary file → header
parsed and checked → loop prevention → rules → fsync → (under the write lock) duplicate
check, atomic move into place, database rows, commit. Only then does the caller answer
success. Nothing slow (no pixel decoding, no inference) happens here.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from spinexr.node.db.models import Instance, Study, utcnow
from spinexr.node.db.states import JobState, Priority, StudyStatus
from spinexr.node.db.timeline import record
from spinexr.node.errors import IngestError
from spinexr.node.ingest.header import InstanceHeader, read_header
from spinexr.node.ingest.rules import ANALYSE, Decision, decide, is_own_object
from spinexr.node.ingest.spool import Spool, SpooledFile
from spinexr.node.settings import Settings
from spinexr.node.sopclasses import ANALYSABLE_SOP_CLASSES, OUTPUT_LIKE_SOP_CLASSES

SUPPORTED_SOP_CLASSES = frozenset(ANALYSABLE_SOP_CLASSES) | frozenset(OUTPUT_LIKE_SOP_CLASSES)

logger = logging.getLogger(__name__)


class Outcome(enum.StrEnum):
    """What happened to a received instance that was answered with success."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    NEW_VERSION = "new_version"
    DROPPED_OWN = "dropped_own"


@dataclass(frozen=True)
class IngestResult:
    """Success outcome for one instance."""

    outcome: Outcome
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    decision: str


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
        # SQLite has one writer; serialising the short critical section here avoids
        # busy-waiting and keeps the duplicate check and the insert atomic.
        self._lock = threading.Lock()

    def check_space(self) -> None:
        """Raise ``out_of_resources`` when the spool is below the free-space watermark."""
        free = self.spool.free_bytes()
        if free < self.settings.storage.min_free_mb * 2**20:
            raise IngestError(
                "out_of_resources",
                f"spool free space {free // 2**20} MiB is below the watermark "
                f"{self.settings.storage.min_free_mb} MiB",
            )

    def ingest(
        self,
        parts: Iterable[bytes | memoryview],
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
        try:
            cfg = self.settings.dicom
            header = read_header(
                spooled.tmp_path,
                max_sequence_depth=cfg.max_sequence_depth,
                max_decompressed_bytes=cfg.max_decompressed_bytes,
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
            with self._lock:
                result = self._record(header, decision, spooled, calling_ae, source)
        except BaseException:
            self.spool.discard(spooled)
            raise
        return result

    def _record(
        self,
        header: InstanceHeader,
        decision: Decision,
        spooled: SpooledFile,
        calling_ae: str,
        source: str,
    ) -> IngestResult:
        with self.sessions() as session:
            versions = session.execute(
                select(Instance.version, Instance.sha256).where(
                    Instance.sop_instance_uid == header.sop_instance_uid
                )
            ).all()
            if any(sha == spooled.sha256 for _, sha in versions):
                self.spool.discard(spooled)
                logger.info("duplicate of %s with identical bytes", header.sop_instance_uid)
                return IngestResult(
                    Outcome.DUPLICATE,
                    header.sop_class_uid,
                    header.sop_instance_uid,
                    header.study_instance_uid,
                    decision.text,
                )
            version = max((v for v, _ in versions), default=0) + 1
            relative = self.spool.relative_path(
                header.study_instance_uid, header.sop_instance_uid, version
            )
            self.spool.place(spooled, relative)
            now = utcnow()
            study = session.scalar(
                select(Study).where(Study.study_instance_uid == header.study_instance_uid)
            )
            urgent = calling_ae in self.settings.study.urgent_calling_aets
            if study is None:
                study = Study(
                    study_instance_uid=header.study_instance_uid,
                    accession_number=header.accession_number or None,
                    modality=header.modality or None,
                    calling_ae=calling_ae[:16],
                    source=source,
                    priority=int(Priority.URGENT if urgent else Priority.ROUTINE),
                    status=StudyStatus.RECEIVING,
                    decision=decision.text,
                    first_received_at=now,
                    last_received_at=now,
                )
                session.add(study)
                record(
                    session,
                    study,
                    "state",
                    to_state=JobState.RECEIVED,
                    detail=f"first instance from {calling_ae} via {source}",
                )
            else:
                study.last_received_at = now
                if urgent:
                    study.priority = int(Priority.URGENT)
                if decision.analyse and study.decision != ANALYSE:
                    study.decision = ANALYSE
                if study.status is StudyStatus.COMPLETE:
                    study.status = StudyStatus.RECEIVING
                    study.completed_at = None
                    record(
                        session,
                        study,
                        "reopened",
                        detail="new instance after completion; results will be superseded",
                    )
            session.add(
                Instance(
                    study=study,
                    series_instance_uid=header.series_instance_uid,
                    sop_instance_uid=header.sop_instance_uid,
                    sop_class_uid=header.sop_class_uid,
                    transfer_syntax_uid=header.transfer_syntax_uid,
                    version=version,
                    path=str(relative),
                    size_bytes=spooled.size,
                    sha256=spooled.sha256,
                    calling_ae=calling_ae[:16],
                    source=source,
                    decision=decision.text,
                    received_at=now,
                )
            )
            if version > 1:
                record(
                    session,
                    study,
                    "new_version",
                    detail=f"{header.sop_instance_uid} received again with different "
                    f"content, stored as version {version}",
                )
                logger.warning(
                    "%s received with different bytes: stored as version %d",
                    header.sop_instance_uid,
                    version,
                )
            session.commit()
        return IngestResult(
            Outcome.NEW_VERSION if version > 1 else Outcome.STORED,
            header.sop_class_uid,
            header.sop_instance_uid,
            header.study_instance_uid,
            decision.text,
        )
