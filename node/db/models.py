"""SQLAlchemy 2 models: studies, instances, jobs, results, outputs, exports, audit timeline.

The same models serve SQLite (embedded) and PostgreSQL (scaled out); Alembic migrations in
``spinexr.node.migrations`` create them. Columns hold UIDs, states and technical facts; the
only identifying values stored are those an admin needs to find a study (accession number),
and they are never logged.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from spinexr.node.db.states import ExportStatus, JobState, OutputKind, Priority, StudyStatus

UID = String(64)
"""A DICOM UID (PS3.5: at most 64 characters)."""


def utcnow() -> dt.datetime:
    """Return the current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        """Store as UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        """Return as aware UTC."""
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _enum(cls: type) -> Enum:
    # Store values (lower case strings), not names; no native ENUM so adding a state
    # needs no ALTER TYPE on PostgreSQL.
    return Enum(
        cls,
        values_callable=lambda e: [m.value for m in e],
        native_enum=False,
        length=16,
        validate_strings=True,
        name=cls.__name__.lower(),
    )


class Base(DeclarativeBase):
    """Declarative base with a naming convention (stable constraint names for Alembic)."""

    metadata = MetaData(naming_convention=NAMING)


class Study(Base):
    """A study the node has received at least one instance of."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    accession_number: Mapped[str | None] = mapped_column(String(16), index=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16), default="dimse")
    priority: Mapped[int] = mapped_column(Integer, default=int(Priority.ROUTINE))
    status: Mapped[StudyStatus] = mapped_column(
        _enum(StudyStatus), default=StudyStatus.RECEIVING, index=True
    )
    decision: Mapped[str | None] = mapped_column(
        String(128), doc="Rule decision: 'analyse' or 'not for analysis: <rule>'."
    )
    first_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    instances: Mapped[list[Instance]] = relationship(
        back_populates="study", cascade="all, delete-orphan", order_by="Instance.id"
    )
    jobs: Mapped[list[Job]] = relationship(
        back_populates="study", cascade="all, delete-orphan", order_by="Job.id"
    )
    events: Mapped[list[AuditEvent]] = relationship(
        back_populates="study", cascade="all, delete-orphan", order_by="AuditEvent.id"
    )


class Instance(Base):
    """One received SOP instance, as stored in the spool.

    A SOP Instance UID received again with identical bytes adds no row; with different
    bytes it is stored as a new ``version``.
    """

    __tablename__ = "instances"
    __table_args__ = (UniqueConstraint("sop_instance_uid", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    version: Mapped[int] = mapped_column(Integer, default=1)
    path: Mapped[str] = mapped_column(String(512), doc="Relative to the spool folder.")
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    content_hash: Mapped[str] = mapped_column(String(80))
    """``algorithm:hex digest`` of the file as received (``blake3:``; ``sha256:`` before 0002)."""
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16), default="dimse")
    decision: Mapped[str] = mapped_column(
        String(128), default="analyse", doc="'analyse' or 'not for analysis: <rule>'."
    )
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    study: Mapped[Study] = relationship(back_populates="instances")


class Job(Base):
    """The analysis of one study: the source of truth for what must still happen.

    The Celery message only says "look at job N"; a job whose lease expired is found by the
    reconciler and queued again, so a lost message never loses a job.
    """

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_priority", "state", "priority"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    state: Mapped[JobState] = mapped_column(_enum(JobState), default=JobState.RECEIVED)
    priority: Mapped[int] = mapped_column(Integer, default=int(Priority.ROUTINE))
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    celery_task_id: Mapped[str | None] = mapped_column(String(64))
    bundle_version: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    superseded_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    study: Mapped[Study] = relationship(back_populates="jobs")
    result: Mapped[Result | None] = relationship(
        back_populates="job", cascade="all, delete-orphan", uselist=False
    )
    outputs: Mapped[list[OutputObject]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="OutputObject.id"
    )
    exports: Mapped[list[ExportAttempt]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="ExportAttempt.id"
    )


class Result(Base):
    """The study-level outcome of a job (details in ``payload``)."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), unique=True, index=True
    )
    outcome: Mapped[str] = mapped_column(String(32), doc="abnormal / no_finding / failed")
    probability: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    abnormal: Mapped[bool | None] = mapped_column(Boolean)
    bundle_name: Mapped[str | None] = mapped_column(String(128))
    bundle_version: Mapped[str | None] = mapped_column(String(64))
    device_uid: Mapped[str | None] = mapped_column(UID)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    job: Mapped[Job] = relationship(back_populates="result")


class OutputObject(Base):
    """A DICOM object the node built for a job (SR, GSPS, KOS, Secondary Capture)."""

    __tablename__ = "output_objects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[OutputKind] = mapped_column(_enum(OutputKind))
    sop_class_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    source_sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(512), doc="Relative to the output folder.")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    job: Mapped[Job] = relationship(back_populates="outputs")


class ExportAttempt(Base):
    """One try at sending one output object to one destination."""

    __tablename__ = "export_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    output_id: Mapped[int | None] = mapped_column(
        ForeignKey("output_objects.id", ondelete="CASCADE")
    )
    destination: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[ExportStatus] = mapped_column(_enum(ExportStatus), default=ExportStatus.PENDING)
    dimse_status: Mapped[int | None] = mapped_column(Integer)
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    verified: Mapped[bool | None] = mapped_column(Boolean)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    next_try_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    job: Mapped[Job] = relationship(back_populates="exports")


class AuditEvent(Base):
    """One line of a study's timeline: what happened, when, and state moves. No PHI."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    event: Mapped[str] = mapped_column(String(64))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str | None] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)

    study: Mapped[Study] = relationship(back_populates="events")
