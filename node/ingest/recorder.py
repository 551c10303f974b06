"""Recording checked, synced instances: duplicate check, move into place, rows, commit.

One recording at a time (SQLite has one writer, and the duplicate check and the insert must be
atomic), but every instance that is waiting when a recording starts is recorded with it: their
files are moved into place, each folder is fsynced once, their rows go into one transaction
and one commit makes them durable together (a group commit). Nothing waits for company: an
instance arriving alone is recorded alone, at once; several arriving together share the
fsyncs instead of queueing for one each. Every instance is answered only after the commit
that holds its row.

Within a transaction the rows are written before the files are moved, so a refused statement
rolls back with no file moved. A failure while moving or syncing rolls the rows back and fails
the whole group (files already moved are set aside at the next start, as after a crash).

Between processes (each DIMSE association runs in its own; ``serve`` records STOW-RS) the
database decides: the unique study UID and (SOP Instance UID, version) constraints refuse the
second of two transactions that would record the same study or version, and its arrivals are
recorded again one by one, seeing what the other wrote (a duplicate, or the next version).
"""

from __future__ import annotations

import enum
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from spinexr.node.db.models import AuditEvent, Instance, Study, utcnow
from spinexr.node.db.states import JobState, Priority, StudyStatus
from spinexr.node.ingest.header import InstanceHeader
from spinexr.node.ingest.rules import ANALYSE, Decision
from spinexr.node.ingest.spool import Spool
from spinexr.node.ingest.spoolwriter import SpooledFile
from spinexr.node.settings import Settings

logger = logging.getLogger(__name__)

_INSTANCES = cast(Table, Instance.__table__)
_STUDIES = cast(Table, Study.__table__)
_EVENTS = cast(Table, AuditEvent.__table__)

# Built once: SQLAlchemy keeps a statement's cache key with the statement, so each execution
# only binds the values (a statement built per instance is analysed again every time).
_VERSIONS = select(_INSTANCES.c.version, _INSTANCES.c.content_hash).where(
    _INSTANCES.c.sop_instance_uid == bindparam("sop_uid")
)
_STUDY = select(_STUDIES.c.id, _STUDIES.c.status, _STUDIES.c.decision).where(
    _STUDIES.c.study_instance_uid == bindparam("study_uid")
)
_NEW_STUDY = insert(_STUDIES)
_NEW_INSTANCE = insert(_INSTANCES)
_NEW_EVENT = insert(_EVENTS)
_STUDY_UPDATE = update(_STUDIES).where(_STUDIES.c.id == bindparam("study_row"))


ATTEMPTS = 10
"""Transactions one arrival may take when other processes commit the same study or instance
first (each conflict means another writer got there; every C-STORE runs in its own process)."""


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


@dataclass
class Arrival:
    """One instance to record: checked, its file synced in the temporary area."""

    header: InstanceHeader
    decision: Decision
    spooled: SpooledFile
    calling_ae: str
    source: str
    result: IngestResult | None = None
    error: BaseException | None = None
    done: bool = False
    relative: Path | None = field(default=None, repr=False)


class Recorder:
    """Records arrivals, several at once when they wait together.

    Parameters
    ----------
    settings : Settings
        For urgent calling AEs.
    sessions : sessionmaker
        Database sessions.
    spool : Spool
        Where files are moved into place.
    """

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], spool: Spool):
        self.settings = settings
        self.sessions = sessions
        self.spool = spool
        self._writer = threading.Lock()  # held while a group is recorded
        self._waiting_lock = threading.Lock()
        self._waiting: list[Arrival] = []

    def record(self, arrival: Arrival) -> IngestResult:
        """Record one arrival (with whatever else is waiting) and return its outcome.

        Parameters
        ----------
        arrival : Arrival
            The instance; its temporary file is consumed (moved or deleted).

        Returns
        -------
        IngestResult
            Stored, new version or duplicate, once committed.

        Raises
        ------
        OSError, SQLAlchemyError
            Moving, syncing or the transaction failed; nothing of it was committed.
        """
        with self._waiting_lock:
            self._waiting.append(arrival)
        with self._writer:
            if not arrival.done:
                with self._waiting_lock:
                    group, self._waiting = self._waiting, []
                self._record_group(group)
        if arrival.error is not None:
            raise arrival.error
        assert arrival.result is not None
        return arrival.result

    # ------------------------------------------------------------------ groups
    def _record_group(self, group: list[Arrival]) -> None:
        try:
            try:
                self._transaction(group)
            except IntegrityError:
                # Another writer (another association's process, STOW-RS, a second node on
                # the same database) committed the same study or instance first: again one
                # by one, seeing what it wrote.
                for arrival in group:
                    self._record_alone(arrival)
        except BaseException as exc:
            self._fail(group, exc)
        finally:
            for arrival in group:
                arrival.done = True

    def _record_alone(self, arrival: Arrival, attempts: int = ATTEMPTS) -> None:
        for attempt in range(attempts):
            try:
                self._transaction([arrival])
                return
            except IntegrityError as exc:
                if attempt == attempts - 1:
                    self._fail([arrival], exc)
            except BaseException as exc:
                self._fail([arrival], exc)
                return

    def _fail(self, group: list[Arrival], exc: BaseException) -> None:
        for arrival in group:
            if arrival.result is None and arrival.error is None:
                arrival.error = exc
                self.spool.discard(arrival.spooled)

    def _transaction(self, group: list[Arrival]) -> None:
        """Rows for the group, then the moves and folder fsyncs, then one commit."""
        results: list[tuple[Arrival, IngestResult]] = []
        moves: list[tuple[SpooledFile, Path]] = []
        duplicates: list[Arrival] = []
        with self.sessions() as session:
            conn = session.connection()
            for arrival in group:
                result = self._rows(conn, arrival)
                results.append((arrival, result))
                if result.outcome is Outcome.DUPLICATE:
                    duplicates.append(arrival)
                else:
                    assert arrival.relative is not None
                    moves.append((arrival.spooled, arrival.relative))
            if moves:
                self.spool.place_all(moves)
            session.commit()
        for arrival, result in results:
            arrival.result = result
        for arrival in duplicates:
            self.spool.discard(arrival.spooled)
            logger.info("duplicate of %s with identical bytes", arrival.header.sop_instance_uid)

    def _rows(self, conn: Connection, arrival: Arrival) -> IngestResult:
        """Duplicate check and the rows of one arrival, in the open transaction."""
        header, spooled = arrival.header, arrival.spooled
        versions = conn.execute(_VERSIONS, {"sop_uid": header.sop_instance_uid}).all()
        if any(digest == spooled.content_hash for _, digest in versions):
            return IngestResult(
                Outcome.DUPLICATE,
                header.sop_class_uid,
                header.sop_instance_uid,
                header.study_instance_uid,
                arrival.decision.text,
            )
        version = max((v for v, _ in versions), default=0) + 1
        arrival.relative = self.spool.relative_path(
            header.study_instance_uid, header.sop_instance_uid, version
        )
        now = utcnow()
        study_id = self._upsert_study(conn, arrival, now)
        conn.execute(
            _NEW_INSTANCE,
            {
                "study_id": study_id,
                "series_instance_uid": header.series_instance_uid,
                "sop_instance_uid": header.sop_instance_uid,
                "sop_class_uid": header.sop_class_uid,
                "transfer_syntax_uid": header.transfer_syntax_uid,
                "version": version,
                "path": str(arrival.relative),
                "size_bytes": spooled.size,
                "content_hash": spooled.content_hash,
                "calling_ae": arrival.calling_ae[:16],
                "source": arrival.source,
                "decision": arrival.decision.text,
                "received_at": now,
            },
        )
        if version > 1:
            _audit(
                conn,
                study_id,
                "new_version",
                now,
                detail=f"{header.sop_instance_uid} received again with different "
                f"content, stored as version {version}",
            )
            logger.warning(
                "%s received with different bytes: stored as version %d",
                header.sop_instance_uid,
                version,
            )
        return IngestResult(
            Outcome.NEW_VERSION if version > 1 else Outcome.STORED,
            header.sop_class_uid,
            header.sop_instance_uid,
            header.study_instance_uid,
            arrival.decision.text,
        )

    def _upsert_study(self, conn: Connection, arrival: Arrival, now: Any) -> int:
        """Create the study row (first instance) or update it; return its id."""
        header, decision = arrival.header, arrival.decision
        calling_ae, source = arrival.calling_ae, arrival.source
        urgent = calling_ae in self.settings.study.urgent_calling_aets
        row = conn.execute(_STUDY, {"study_uid": header.study_instance_uid}).first()
        if row is None:
            inserted = conn.execute(
                _NEW_STUDY,
                {
                    "study_instance_uid": header.study_instance_uid,
                    "accession_number": header.accession_number or None,
                    "modality": header.modality or None,
                    "calling_ae": calling_ae[:16],
                    "source": source,
                    "priority": int(Priority.URGENT if urgent else Priority.ROUTINE),
                    "status": StudyStatus.RECEIVING,
                    "decision": decision.text,
                    "first_received_at": now,
                    "last_received_at": now,
                },
            )
            key = inserted.inserted_primary_key
            assert key is not None
            study_id = int(key[0])
            _audit(
                conn,
                study_id,
                "state",
                now,
                detail=f"first instance from {calling_ae} via {source}",
                to_state=JobState.RECEIVED,
            )
            return study_id
        study_id = int(row.id)
        changes: dict[str, Any] = {"last_received_at": now}
        if urgent:
            changes["priority"] = int(Priority.URGENT)
        if decision.analyse and row.decision != ANALYSE:
            changes["decision"] = ANALYSE
        if row.status is StudyStatus.COMPLETE:
            changes["status"] = StudyStatus.RECEIVING
            changes["completed_at"] = None
            _audit(
                conn,
                study_id,
                "reopened",
                now,
                detail="new instance after completion; results will be superseded",
            )
        conn.execute(_STUDY_UPDATE, {"study_row": study_id, **changes})
        return study_id


def _audit(
    conn: Connection,
    study_id: int,
    event: str,
    at: Any,
    *,
    detail: str,
    to_state: JobState | None = None,
) -> None:
    """Add one timeline row in the caller's transaction, like :func:`.timeline.record`."""
    conn.execute(
        _NEW_EVENT,
        {
            "study_id": study_id,
            "event": event,
            "detail": detail,
            "to_state": to_state.value if to_state else None,
            "at": at,
        },
    )
