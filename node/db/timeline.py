"""Job state moves and the per-study audit timeline, written in the caller's transaction."""

from __future__ import annotations

import logging

from sqlalchemy import update
from sqlalchemy.orm import Session

from spinexr.node.db.models import AuditEvent, Job, Study, utcnow
from spinexr.node.db.states import JobState, can_transition
from spinexr.node.errors import InvalidTransitionError

logger = logging.getLogger(__name__)


def record(
    session: Session,
    study: Study,
    event: str,
    *,
    job: Job | None = None,
    detail: str | None = None,
    from_state: JobState | None = None,
    to_state: JobState | None = None,
) -> AuditEvent:
    """Add one event to a study's timeline (no commit; the caller's transaction owns it).

    Parameters
    ----------
    session : Session
        Open session.
    study : Study
        The study the event belongs to.
    event : str
        Short machine-readable name, e.g. ``instance_received`` or ``state``.
    job : Job, optional
        The job concerned.
    detail : str, optional
        Human-readable detail. Must not contain PHI (UIDs and counts only).
    from_state, to_state : JobState, optional
        For state moves.

    Returns
    -------
    AuditEvent
        The added event.
    """
    ev = AuditEvent(
        study=study,
        job_id=job.id if job is not None else None,
        event=event,
        detail=detail,
        from_state=from_state.value if from_state else None,
        to_state=to_state.value if to_state else None,
        at=utcnow(),
    )
    session.add(ev)
    return ev


def transition(
    session: Session,
    job: Job,
    new_state: JobState,
    *,
    detail: str | None = None,
    error: str | None = None,
) -> None:
    """Move ``job`` to ``new_state`` and record it in the study's timeline.

    Parameters
    ----------
    session : Session
        Open session (not committed here).
    job : Job
        The job; its ``study`` relationship must be loadable.
    new_state : JobState
        Target state.
    detail : str, optional
        Timeline detail (no PHI).
    error : str, optional
        Stored as ``last_error`` (for ``failed``/``dead``).

    Raises
    ------
    InvalidTransitionError
        If the state machine does not allow the move.
    """
    old = job.state
    if not can_transition(old, new_state):
        raise InvalidTransitionError(
            f"job {job.id}: {old.value} → {new_state.value} is not allowed"
        )
    job.state = new_state
    job.updated_at = utcnow()
    if error is not None:
        job.last_error = error
    if not new_state.leased:
        job.lease_owner = None
        job.lease_expires_at = None
    record(
        session,
        job.study,
        "state",
        job=job,
        detail=detail or error,
        from_state=old,
        to_state=new_state,
    )
    logger.info("job %s: %s -> %s", job.id, old.value, new_state.value)


def transition_if(
    session: Session, job: Job, new_state: JobState, *, detail: str | None = None
) -> bool:
    """Move ``job`` as :func:`transition` does, only if the database still holds its state.

    A compare-and-set (``UPDATE ... WHERE id = :id AND state = :read``) for moves that two
    processes may decide at once from what they read (the assembler queueing a completed job
    while the reconciler does; the reconciler recovering a job its worker just finished):
    exactly one of them moves the job and writes the timeline event.

    Parameters
    ----------
    session : Session
        Open session (not committed here).
    job : Job
        The job as this session read it.
    new_state : JobState
        Target state.
    detail : str, optional
        Timeline detail (no PHI).

    Returns
    -------
    bool
        True when this call moved the job; False when it had changed meanwhile (``job`` is
        then reloaded).

    Raises
    ------
    InvalidTransitionError
        If the state machine does not allow the move.
    """
    old = job.state
    if not can_transition(old, new_state):
        raise InvalidTransitionError(
            f"job {job.id}: {old.value} → {new_state.value} is not allowed"
        )
    values: dict[str, object] = {"state": new_state, "updated_at": utcnow()}
    if not new_state.leased:
        values |= {"lease_owner": None, "lease_expires_at": None}
    moved = session.execute(
        update(Job).where(Job.id == job.id, Job.state == old).values(**values)
    ).rowcount  # type: ignore[attr-defined]
    session.refresh(job)
    if not moved:
        logger.info("job %s: no longer %s; left as %s", job.id, old.value, job.state.value)
        return False
    record(session, job.study, "state", job=job, detail=detail, from_state=old, to_state=new_state)
    logger.info("job %s: %s -> %s", job.id, old.value, new_state.value)
    return True
