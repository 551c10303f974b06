"""Admin actions: retry and cancel a job, complete a study, each recorded with its actor.

The one path of the CLI, the admin API and the admin pages: the state moves
(`spinexr.node.admin.jobs.retry_in`, ``cancel_in``,
`spinexr.node.ingest.assembler.StudyAssembler.force_complete`) and an ``admin`` event
naming the actor (``cli``, ``admin-api``, ``admin-web``) in the study's timeline are written
in one transaction: both are committed, or neither (an action that fails leaves no trace
and no unrecorded change). The job is handed to the queue after the commit. A job whose
message cannot be sent (broker down) is not lost: the reconciler re-sends queued and built
jobs idle longer than a lease.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from spinexr.node.admin.errors import ConflictError, NotFoundError
from spinexr.node.admin.jobs import cancel_in, retry_in
from spinexr.node.db.models import Job, Study
from spinexr.node.db.states import Priority
from spinexr.node.db.timeline import record
from spinexr.node.errors import SpinexrError
from spinexr.node.ingest.assembler import StudyAssembler, model_identity
from spinexr.node.settings import Settings

logger = logging.getLogger(__name__)

Actor = Literal["admin-api", "admin-web", "cli"]


class Dispatcher(Protocol):
    """Hands jobs to the queue (after the database commit)."""

    def analysis(self, job_id: int, priority: int) -> None:
        """Send the analysis message of a ``queued`` job."""
        ...

    def export(self, job_id: int) -> None:
        """Send the export message of a ``built`` job."""
        ...

    def queue(self, sessions: sessionmaker[Session], job_id: int, detail: str) -> bool:
        """Move a ``complete`` job to ``queued``, commit, then send its message."""
        ...


class CeleryDispatcher:
    """Publishes to the node's Celery queues (`spinexr.node.tasking.dispatch`).

    Parameters
    ----------
    settings : Settings
        Broker settings.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _configure(self) -> None:
        from spinexr.node.tasking.app import configure

        configure(self.settings)

    def analysis(self, job_id: int, priority: int) -> None:
        """Send the analysis message."""
        from spinexr.node.tasking.dispatch import publish_analysis

        self._configure()
        publish_analysis(job_id, priority)

    def export(self, job_id: int) -> None:
        """Send the export message."""
        from spinexr.node.tasking.dispatch import publish_export

        self._configure()
        publish_export(job_id)

    def queue(self, sessions: sessionmaker[Session], job_id: int, detail: str) -> bool:
        """Queue a ``complete`` job (`spinexr.node.tasking.dispatch.queue_job`)."""
        from spinexr.node.tasking.dispatch import queue_job

        self._configure()
        return queue_job(sessions, job_id, detail)


@dataclass(frozen=True)
class ActionOutcome:
    """What an admin action did.

    Attributes
    ----------
    job_id : int or None
        The job acted on or created (None when completing a study created no job).
    state : str or None
        The job's state afterwards.
    message : str
        One line for the admin.
    published : bool
        Whether a queue message was sent.
    """

    job_id: int | None
    state: str | None
    message: str
    published: bool = False


def _audit(session: Session, study: Study, job: Job | None, detail: str) -> None:
    """Add the ``admin`` event in the transaction of the change it records (no commit)."""
    record(session, study, "admin", job=job, detail=detail)


def _study_of(session: Session, job_id: int) -> tuple[Job, Study]:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    return job, job.study


def _state(sessions: sessionmaker[Session], job_id: int) -> str:
    with sessions() as session:
        job = session.get(Job, job_id)
        return job.state.value if job is not None else "?"


def _publish(send: Callable[..., object], *args: object) -> bool:
    try:
        sent = send(*args)
    except Exception as exc:  # broker down: the reconciler re-sends the job later
        logger.warning("queue message not sent (%s); the reconciler will", type(exc).__name__)
        return False
    return sent is not False


def retry(
    sessions: sessionmaker[Session], dispatcher: Dispatcher, job_id: int, actor: Actor
) -> ActionOutcome:
    """Send a failed, dead, cancelled or finished job round again.

    Parameters
    ----------
    sessions : sessionmaker
        Database sessions.
    dispatcher : Dispatcher
        The queue.
    job_id : int
        The job.
    actor : {"admin-api", "admin-web", "cli"}
        Who asked (goes into the timeline).

    Returns
    -------
    ActionOutcome
        The job's new state; export again when it has outputs, else analysis.

    Raises
    ------
    NotFoundError
        If the job does not exist.
    ConflictError
        If the job is queued or running.
    """
    with sessions() as session:
        try:
            what = retry_in(session, job_id)
        except NotFoundError:
            raise
        except SpinexrError as exc:
            raise ConflictError(str(exc)) from exc
        job, study = _study_of(session, job_id)
        _audit(session, study, job, f"retry ({what}) requested by {actor}")
        session.commit()
    if what == "export":
        published = _publish(dispatcher.export, job_id)
    else:
        published = _publish(dispatcher.analysis, job_id, int(Priority.URGENT))
    logger.info("job %s: %s retry by %s", job_id, what, actor)
    return ActionOutcome(
        job_id, _state(sessions, job_id), f"job {job_id}: {what} queued again", published
    )


def cancel(sessions: sessionmaker[Session], job_id: int, actor: Actor) -> ActionOutcome:
    """Cancel a job that has not finished.

    Parameters
    ----------
    sessions : sessionmaker
        Database sessions.
    job_id : int
        The job.
    actor : {"admin-api", "admin-web", "cli"}
        Who asked.

    Returns
    -------
    ActionOutcome
        State ``cancelled``.

    Raises
    ------
    NotFoundError
        If the job does not exist.
    ConflictError
        If the state machine does not allow cancelling it (finished, dead, ...).
    """
    with sessions() as session:
        try:
            cancel_in(session, job_id)
        except NotFoundError:
            raise
        except SpinexrError as exc:
            raise ConflictError(str(exc)) from exc
        job, study = _study_of(session, job_id)
        _audit(session, study, job, f"cancel requested by {actor}")
        session.commit()
    logger.info("job %s: cancelled by %s", job_id, actor)
    return ActionOutcome(job_id, _state(sessions, job_id), f"job {job_id} cancelled")


def complete_study(
    settings: Settings,
    sessions: sessionmaker[Session],
    dispatcher: Dispatcher,
    uid: str,
    actor: Actor,
) -> ActionOutcome:
    """Complete a study now; a new job is queued when a bundle can analyse it.

    Parameters
    ----------
    settings : Settings
        ``models.bundle`` (the job key's model) and the queue mode.
    sessions : sessionmaker
        Database sessions.
    dispatcher : Dispatcher
        The queue.
    uid : str
        Study Instance UID.
    actor : {"admin-api", "admin-web", "cli"}
        Who asked.

    Returns
    -------
    ActionOutcome
        The new job, or none when nothing new is to be analysed.

    Raises
    ------
    NotFoundError
        If the study is unknown.
    """
    with sessions() as session:
        exists = session.scalar(select(Study.id).where(Study.study_instance_uid == uid))
    if exists is None:
        raise NotFoundError(f"no study {uid}")
    assembler = StudyAssembler(settings, sessions, model_identity(settings.models.bundle))
    job_id = assembler.force_complete(
        uid,
        audit=lambda session, study, job: _audit(
            session, study, job, f"completion requested by {actor}"
        ),
    )
    if job_id is None:
        return ActionOutcome(None, None, "study complete; no new job (nothing new to analyse)")
    published = False
    # As `serve` does: scaled out, remote inference workers hold the bundle.
    if settings.models.bundle is not None or not settings.embedded_queue:
        published = _publish(dispatcher.queue, sessions, job_id, f"queued by {actor}")
        message = f"study complete; job {job_id} queued"
    else:
        logger.warning("job %s waits: no model bundle loaded", job_id)
        message = f"study complete; job {job_id} created (waits: no model bundle loaded)"
    logger.info("study %s completed by %s: job %s", uid, actor, job_id)
    return ActionOutcome(job_id, _state(sessions, job_id), message, published)
