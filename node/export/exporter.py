"""One export round of a job: every output object to every destination that wants it.

The database records one :class:`ExportAttempt` per object, destination and round. A round
that leaves anything unsent fails the job with the reasons; the caller retries after
:meth:`Exporter.backoff`; after ``queue.max_attempts`` rounds the job is ``dead`` (the dead
letter), with the last error of every destination visible in the job and its attempts.
Objects already accepted by a destination are not sent to it again, and re-sent objects
keep their SOP Instance UIDs, so a PACS never receives duplicates.

A job cancelled while its round runs (superseded by a newer job of its study, or by an
admin) is checked for before every send: the round stops there, what was already sent is
recorded, and the job stays cancelled (no retry, no dead letter).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from spinexr.node.db.models import ExportAttempt, Job, OutputObject, utcnow
from spinexr.node.db.states import ExportStatus, JobState
from spinexr.node.db.timeline import record, transition
from spinexr.node.errors import SpinexrError
from spinexr.node.export.transport import (
    InstanceOutcome,
    send_dimse,
    send_stow,
    verify_dimse,
    verify_qido,
)
from spinexr.node.settings import Destination, Settings

logger = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 5.0
BACKOFF_CAP_SECONDS = 900.0
RETRY_AFTER_CAP_SECONDS = 3600.0
"""The longest ``Retry-After`` honoured: a destination asking for more is retried after an hour."""


@dataclass
class ExportRound:
    """What one round achieved."""

    attempt: int
    state: JobState
    failures: list[str] = field(default_factory=list)
    retry_in: float | None = None

    @property
    def done(self) -> bool:
        """True when nothing is left to send."""
        return self.state in (JobState.EXPORTED, JobState.VERIFIED)

    @property
    def stopped(self) -> bool:
        """True when the job was cancelled (e.g. superseded) before the round ended."""
        return self.state is JobState.CANCELLED


class Exporter:
    """Sends a job's built objects to the configured destinations.

    Parameters
    ----------
    settings : Settings
        ``destinations``, ``dicom.ae_title`` (calling AE), ``queue.max_attempts``,
        ``storage.output_dir``.
    sessions : sessionmaker
        Database sessions.
    """

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before round ``attempt + 1`` (exponential, capped)."""
        return float(min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, attempt - 1)))

    def _send(
        self,
        dest: Destination,
        files: list[Path],
        on_outcome: Callable[[InstanceOutcome], None] | None = None,
    ) -> list[InstanceOutcome]:
        if dest.kind == "dimse":
            return send_dimse(
                dest,
                files,
                self.settings.dicom.ae_title,
                timeout=self.settings.dicom.scu_timeout,
                on_outcome=on_outcome,
            )
        return send_stow(dest, files, timeout=self.settings.dicom.scu_timeout)

    def _cancelled(self, job_id: int) -> bool:
        """Whether the job was cancelled since the round began (checked before each send)."""
        with self.sessions() as session:
            state = session.scalar(select(Job.state).where(Job.id == job_id))
        return state is JobState.CANCELLED

    def _verify(self, dest: Destination, study_uid: str) -> set[str]:
        if dest.kind == "dimse":
            return verify_dimse(
                dest, study_uid, self.settings.dicom.ae_title, self.settings.dicom.scu_timeout
            )
        return verify_qido(dest, study_uid, timeout=self.settings.dicom.scu_timeout)

    def export(self, job_id: int) -> ExportRound:
        """Run one export round for ``job_id`` (state ``built`` or ``failed``).

        Parameters
        ----------
        job_id : int
            The job.

        Returns
        -------
        ExportRound
            The round's outcome; ``retry_in`` is set when another round is due. A cancelled
            job (superseded by a newer job of its study) sends nothing more: ``cancelled``.

        Raises
        ------
        SpinexrError
            If the job does not exist or is not waiting for export.
        """
        with self.sessions() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise SpinexrError(f"no job {job_id}")
            if job.state is JobState.CANCELLED:  # superseded (or cancelled) since queued
                last = session.scalar(
                    select(func.max(ExportAttempt.attempt)).where(ExportAttempt.job_id == job_id)
                )
                logger.info("job %s: cancelled; nothing exported", job_id)
                return ExportRound(last or 0, JobState.CANCELLED)
            if job.state is JobState.FAILED:
                transition(session, job, JobState.BUILT, detail="export retry")
            if job.state is not JobState.BUILT:
                raise SpinexrError(f"job {job_id} is {job.state.value}, not waiting for export")
            attempt = 1 + (
                session.scalar(
                    select(func.max(ExportAttempt.attempt)).where(ExportAttempt.job_id == job_id)
                )
                or 0
            )
            transition(session, job, JobState.EXPORTING, detail=f"export round {attempt}")
            session.commit()
            study_uid = job.study.study_instance_uid
            outputs = list(job.outputs)
            done = {
                (a.destination, a.output_id)
                for a in job.exports
                if a.status in (ExportStatus.SUCCESS, ExportStatus.WARNING)
            }
        output_dir = self.settings.storage.output_dir
        failures: list[str] = []
        records: list[ExportAttempt] = []
        verify_detail: list[str] = []
        sent_early = 0  # objects recorded as sent while the round ran
        asked: float | None = None  # the longest Retry-After a failing destination sent
        stopped = False
        for dest in self.settings.destinations:
            todo = [
                o for o in outputs if o.kind.value in dest.objects and (dest.name, o.id) not in done
            ]
            if not todo:
                continue
            if self._cancelled(job_id):
                stopped = True
                break
            started = utcnow()
            by_obj = {o.sop_instance_uid: o for o in todo}
            early: set[str] = set()  # recorded as soon as the destination acknowledged them

            acknowledged = functools.partial(
                self._record_acknowledged, job_id, attempt, dest, by_obj, started, early
            )
            outcomes = self._send(dest, [output_dir / o.path for o in todo], acknowledged)
            sent_early += len(early)
            by_uid = {o.sop_instance_uid: o for o in outcomes}
            for o in outcomes:
                if not o.ok and o.retry_after is not None:
                    asked = max(asked or 0.0, o.retry_after)
            landed: set[str] | None = None
            if dest.verify and all(o.ok for o in outcomes):
                landed = self._verify(dest, study_uid)
            for obj in todo:
                if obj.sop_instance_uid in early:
                    continue
                out = by_uid.get(obj.sop_instance_uid) or InstanceOutcome(
                    obj.sop_instance_uid, False, error="no status for this instance"
                )
                ok, error = out.ok, out.error
                verified = None
                if landed is not None:
                    verified = obj.sop_instance_uid in landed
                    if not verified:
                        ok, error = False, "accepted but not found by read-back"
                out = dataclasses.replace(out, ok=ok, error=error)
                records.append(
                    self._attempt(job_id, obj, dest.name, attempt, out, started, verified)
                )
                if not ok:
                    failures.append(
                        f"{dest.name}: {obj.kind.value} {obj.sop_instance_uid}: {error}"
                    )
            if landed is not None:
                verify_detail.append(dest.name)
        if stopped:
            return self._stop(job_id, attempt, records, sent_early)
        return self._finish(job_id, attempt, records, failures, verify_detail, asked, sent_early)

    def _record_acknowledged(
        self,
        job_id: int,
        attempt: int,
        dest: Destination,
        by_obj: dict[str, OutputObject],
        started: dt.datetime,
        early: set[str],
        out: InstanceOutcome,
    ) -> None:
        """Record an object the destination acknowledged at once (no read-back configured).

        So a worker killed later in the round does not send it to the PACS again.
        """
        obj = by_obj.get(out.sop_instance_uid)
        if not out.ok or dest.verify or obj is None:
            return
        with self.sessions() as session:
            session.add(self._attempt(job_id, obj, dest.name, attempt, out, started, None))
            session.commit()
        early.add(out.sop_instance_uid)

    @staticmethod
    def _attempt(
        job_id: int,
        obj: OutputObject,
        destination: str,
        attempt: int,
        out: InstanceOutcome,
        started: dt.datetime,
        verified: bool | None,
    ) -> ExportAttempt:
        """Return the row of one object's send to one destination in one round."""
        return ExportAttempt(
            job_id=job_id,
            output_id=obj.id,
            destination=destination,
            attempt=attempt,
            status=ExportStatus.SUCCESS if out.ok else ExportStatus.FAILED,
            dimse_status=out.dimse_status,
            http_status=out.http_status,
            error=out.error,
            verified=verified,
            started_at=started,
            finished_at=utcnow(),
        )

    def _stop(
        self, job_id: int, attempt: int, records: list[ExportAttempt], sent_early: int = 0
    ) -> ExportRound:
        """Record what a round sent before its job was cancelled, and leave it cancelled."""
        with self.sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None
            session.add_all(records)
            sent = sent_early + sum(r.status is ExportStatus.SUCCESS for r in records)
            record(
                session,
                job.study,
                "export_stopped",
                job=job,
                detail=f"round {attempt} stopped: job {job.state.value}; "
                f"{sent} object(s) had been sent",
            )
            session.commit()
        logger.info("job %s: export round %d stopped: job cancelled", job_id, attempt)
        return ExportRound(attempt, JobState.CANCELLED)

    def _finish(
        self,
        job_id: int,
        attempt: int,
        records: list[ExportAttempt],
        failures: list[str],
        verified: list[str],
        asked: float | None = None,
        sent_early: int = 0,
    ) -> ExportRound:
        max_attempts = self.settings.queue.max_attempts
        with self.sessions() as session:
            job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
            assert job is not None
            if job.state is JobState.CANCELLED:  # cancelled during the last send
                session.rollback()
                return self._stop(job_id, attempt, records, sent_early)
            session.add_all(records)
            if not failures:
                sent = sent_early + len(records)
                detail = (
                    f"round {attempt}: {sent} object(s) sent"
                    if sent
                    else "nothing to send (no destination wants these objects)"
                )
                transition(session, job, JobState.EXPORTED, detail=detail)
                state = JobState.EXPORTED
                if verified and all(r.verified for r in records if r.verified is not None):
                    transition(
                        session,
                        job,
                        JobState.VERIFIED,
                        detail=f"read back from {', '.join(verified)}",
                    )
                    state = JobState.VERIFIED
                session.commit()
                return ExportRound(attempt, state)
            by_dest: dict[str, str] = {}
            for f in failures:
                by_dest.setdefault(f.split(":", 1)[0], f)
            summary = f"{len(failures)} object(s) not exported; " + "; ".join(by_dest.values())
            transition(session, job, JobState.FAILED, error=summary[:2000])
            if attempt >= max_attempts:
                for rec in records:
                    if rec.status is ExportStatus.FAILED:
                        rec.status = ExportStatus.DEAD
                transition(
                    session,
                    job,
                    JobState.DEAD,
                    error=f"dead letter after {attempt} export rounds: {summary}"[:2000],
                )
                session.commit()
                logger.error("job %s: export dead after %d rounds", job_id, attempt)
                return ExportRound(attempt, JobState.DEAD, failures)
            retry_in = self.backoff(attempt)
            if asked is not None:  # the destination's Retry-After, when longer, is honoured
                retry_in = max(retry_in, min(asked, RETRY_AFTER_CAP_SECONDS))
            for rec in records:
                if rec.status is ExportStatus.FAILED:
                    rec.next_try_at = utcnow() + dt.timedelta(seconds=retry_in)
            session.commit()
            logger.warning(
                "job %s: export round %d failed (%d object(s)); retry in %.0f s",
                job_id,
                attempt,
                len(failures),
                retry_in,
            )
            return ExportRound(attempt, JobState.FAILED, failures, retry_in)
