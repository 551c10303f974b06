"""Handing jobs to the queue, always after the database commit."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from spinexr.node.db.models import Job
from spinexr.node.db.states import JobState
from spinexr.node.db.timeline import transition_if

logger = logging.getLogger(__name__)


def publish_analysis(job_id: int, priority: int) -> None:
    """Send the analysis message for a job that is already ``queued`` in the database."""
    from spinexr.node.tasking.app import INFERENCE_QUEUE
    from spinexr.node.tasking.tasks import analyze_study

    analyze_study.apply_async(args=[job_id], queue=INFERENCE_QUEUE, priority=priority)


def publish_export(job_id: int) -> None:
    """Send the export message for a ``built`` (or export-``failed``) job."""
    from spinexr.node.tasking.app import EXPORT_QUEUE
    from spinexr.node.tasking.tasks import export_results

    export_results.apply_async(args=[job_id], queue=EXPORT_QUEUE)


def queue_job(sessions: sessionmaker[Session], job_id: int, detail: str | None = None) -> bool:
    """Move a ``complete`` (or retried) job to ``queued``, commit, then publish it.

    If the process dies between the commit and the publish, the reconciler publishes the
    job later: a queued job without a message is found, never lost.

    Parameters
    ----------
    sessions : sessionmaker
        Database sessions.
    job_id : int
        The job.
    detail : str, optional
        Timeline detail.

    Returns
    -------
    bool
        True when the job was queued and published.
    """
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None or job.state not in (JobState.COMPLETE, JobState.QUEUED):
            return False
        if job.state is JobState.COMPLETE and not transition_if(
            session, job, JobState.QUEUED, detail=detail
        ):
            return False  # queued meanwhile (by the reconciler), which published it
        priority = job.priority
        session.commit()
    publish_analysis(job_id, priority)
    return True
