"""The job views and state moves of the CLI, the admin API and the admin pages.

List, show, retry, cancel, the queue status, and the failures list.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload, selectinload, sessionmaker

from spinexr.node.admin.errors import NotFoundError
from spinexr.node.db.models import AuditEvent, ExportAttempt, Job, Study, utcnow
from spinexr.node.db.states import ExportStatus, JobState
from spinexr.node.db.timeline import transition
from spinexr.node.errors import SpinexrError

FAILED_JOB_STATES = (JobState.FAILED, JobState.DEAD)
"""Jobs listed on the failures page."""

_SETTLED = (JobState.EXPORTED, JobState.VERIFIED, JobState.CANCELLED)
"""Jobs whose old export failures no longer matter."""


def _job_row(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "study_instance_uid": job.study.study_instance_uid,
        "state": job.state.value,
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "lease_owner": job.lease_owner,
        "last_error": job.last_error,
        "bundle_version": job.bundle_version,
        "created_at": job.created_at.isoformat(),
        "updated_at": job.updated_at.isoformat(),
    }


def list_jobs(
    sessions: sessionmaker[Session], state: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Return the newest jobs, optionally of one state (with their studies: one query)."""
    with sessions() as session:
        stmt = select(Job).options(joinedload(Job.study)).order_by(Job.id.desc()).limit(limit)
        if state:
            stmt = stmt.where(Job.state == JobState(state))
        return [_job_row(j) for j in session.scalars(stmt)]


def show_job(sessions: sessionmaker[Session], job_id: int) -> dict[str, Any]:
    """Return one job with its outputs and export attempts."""
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id}")
        row = _job_row(job)
        row["outputs"] = [
            {"kind": o.kind.value, "sop_instance_uid": o.sop_instance_uid, "path": o.path}
            for o in job.outputs
        ]
        row["exports"] = [
            {
                "destination": a.destination,
                "attempt": a.attempt,
                "status": a.status.value,
                "dimse_status": a.dimse_status,
                "http_status": a.http_status,
                "error": a.error,
                "verified": a.verified,
            }
            for a in job.exports
        ]
        row["result"] = (
            None
            if job.result is None
            else {
                "outcome": job.result.outcome,
                "probability": job.result.probability,
                "threshold": job.result.threshold,
            }
        )
        return row


def retry_job(sessions: sessionmaker[Session], job_id: int) -> str:
    """Send a failed, dead, cancelled or finished job round again (one transaction).

    See :func:`retry_in`.

    Returns
    -------
    str
        ``"analysis"`` or ``"export"``: what the caller must publish.
    """
    with sessions() as session:
        what = retry_in(session, job_id)
        session.commit()
        return what


def retry_in(session: Session, job_id: int) -> str:
    """Move a job for a retry in the caller's transaction (no commit).

    A job with outputs goes back to export; one without goes back to analysis (attempts
    reset).

    Parameters
    ----------
    session : Session
        Open session; the caller commits (with its audit event) or rolls back.
    job_id : int
        The job.

    Returns
    -------
    str
        ``"analysis"`` or ``"export"``: what the caller must publish after the commit.

    Raises
    ------
    NotFoundError
        If the job does not exist.
    SpinexrError
        If the job is queued or running.
    """
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    if job.state in (JobState.ANALYZING, JobState.EXPORTING, JobState.QUEUED):
        raise SpinexrError(f"job {job_id} is {job.state.value}: nothing to retry")
    if job.outputs and job.state in (
        JobState.FAILED,
        JobState.DEAD,
        JobState.EXPORTED,
        JobState.VERIFIED,
        JobState.BUILT,
    ):
        if job.state is not JobState.BUILT:
            transition(session, job, JobState.BUILT, detail="export again (admin retry)")
        return "export"
    if job.state is JobState.COMPLETE:
        transition(session, job, JobState.QUEUED, detail="queued by admin")
    else:
        transition(session, job, JobState.QUEUED, detail="retry by admin")
    job.attempts = 0
    return "analysis"


def cancel_job(sessions: sessionmaker[Session], job_id: int) -> None:
    """Cancel a job that is not finished (one transaction; see :func:`cancel_in`)."""
    with sessions() as session:
        cancel_in(session, job_id)
        session.commit()


def cancel_in(session: Session, job_id: int) -> None:
    """Cancel a job in the caller's transaction (no commit).

    A running attempt finishes but is discarded.

    Parameters
    ----------
    session : Session
        Open session; the caller commits (with its audit event) or rolls back.
    job_id : int
        The job.

    Raises
    ------
    NotFoundError
        If the job does not exist.
    InvalidTransitionError
        If the job's state cannot move to ``cancelled``.
    """
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    transition(session, job, JobState.CANCELLED, detail="cancelled by admin")


def status(sessions: sessionmaker[Session]) -> dict[str, Any]:
    """Return counts per state, the oldest waiting job, workers seen and export failures."""
    with sessions() as session:
        counts = dict(
            session.execute(select(Job.state, func.count(Job.id)).group_by(Job.state)).all()
        )
        waiting = session.execute(
            select(Job.id, Job.created_at)
            .where(Job.state.in_([JobState.COMPLETE, JobState.QUEUED]))
            .order_by(Job.created_at)
            .limit(1)
        ).first()
        since = utcnow() - dt.timedelta(hours=1)
        details = session.scalars(
            select(AuditEvent.detail).where(
                AuditEvent.to_state == JobState.ANALYZING.value, AuditEvent.at >= since
            )
        ).all()
        workers = sorted({d.split(" on ", 1)[1] for d in details if d and " on " in d})
        failed_exports = (
            session.scalar(
                select(func.count(ExportAttempt.id)).where(
                    ExportAttempt.status.in_(["failed", "dead"])
                )
            )
            or 0
        )
    oldest = None
    if waiting is not None:
        oldest = {
            "job_id": waiting[0],
            "waiting_seconds": round((utcnow() - waiting[1]).total_seconds()),
        }
    return {
        "jobs": {s.value: int(counts.get(s, 0)) for s in JobState},
        "oldest_waiting": oldest,
        "workers_seen_last_hour": workers,
        "failed_export_attempts": int(failed_exports),
    }


def failures(sessions: sessionmaker[Session], limit: int = 100) -> dict[str, list[dict[str, Any]]]:
    """Return failed and dead-letter jobs, and the export failures still unresolved.

    Parameters
    ----------
    sessions : sessionmaker
        Database sessions.
    limit : int
        Most jobs listed (most recently updated first).

    Returns
    -------
    dict
        ``jobs``: failed/dead jobs; ``exports``: per job and destination, its latest
        round's failed or dead objects (jobs since exported or cancelled left out).
    """
    with sessions() as session:
        jobs = [
            {
                "id": job.id,
                "study_instance_uid": study.study_instance_uid,
                "accession_number": study.accession_number,
                "state": job.state.value,
                "attempts": job.attempts,
                "max_attempts": job.max_attempts,
                "last_error": job.last_error,
                "stage": "export" if job.outputs else "analysis",
                "updated_at": job.updated_at,
            }
            for job, study in session.execute(
                select(Job, Study)
                .options(selectinload(Job.outputs))
                .join(Study, Study.id == Job.study_id)
                .where(Job.state.in_(FAILED_JOB_STATES))
                .order_by(Job.updated_at.desc(), Job.id.desc())
                .limit(limit)
            )
        ]
        attempts = session.execute(
            select(ExportAttempt, Job.state, Study.study_instance_uid)
            .join(Job, Job.id == ExportAttempt.job_id)
            .join(Study, Study.id == Job.study_id)
            .where(Job.state.not_in(_SETTLED))
            .order_by(ExportAttempt.job_id.desc(), ExportAttempt.attempt.desc())
            .limit(20 * limit)
        ).all()
    latest: dict[tuple[int, str], int] = {}
    groups: dict[tuple[int, str], dict[str, Any]] = {}
    for attempt, state, uid in attempts:
        key = (attempt.job_id, attempt.destination)
        round_ = latest.setdefault(key, attempt.attempt)
        if attempt.attempt != round_ or attempt.status not in (
            ExportStatus.FAILED,
            ExportStatus.DEAD,
        ):
            continue
        group = groups.setdefault(
            key,
            {
                "job_id": attempt.job_id,
                "job_state": state.value,
                "study_instance_uid": uid,
                "destination": attempt.destination,
                "attempt": attempt.attempt,
                "status": attempt.status.value,
                "objects": 0,
                "error": attempt.error,
                "next_try_at": attempt.next_try_at,
                "finished_at": attempt.finished_at,
            },
        )
        group["objects"] += 1
        if attempt.status is ExportStatus.DEAD:
            group["status"] = ExportStatus.DEAD.value
    return {"jobs": jobs, "exports": list(groups.values())[:limit]}
