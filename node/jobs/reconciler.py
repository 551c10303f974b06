"""Recovery: jobs whose message or worker was lost are found in the database and re-sent.

Runs at start-up of ``serve`` and then periodically. Each rule re-publishes only work that
has been idle longer than a lease, so a healthy queue sees no extra messages.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from spinexr.node.db.models import Job, utcnow
from spinexr.node.db.states import JobState
from spinexr.node.db.timeline import transition_if
from spinexr.node.settings import Settings

logger = logging.getLogger(__name__)


class Reconciler:
    """Re-queues stuck jobs.

    Parameters
    ----------
    settings : Settings
        ``queue.lease_seconds`` is the idle time after which work counts as lost.
    sessions : sessionmaker
        Database sessions.
    publish_analysis, publish_export : callable
        Send a message for a job id (analysis takes the priority too).
    can_analyse : bool
        False when no bundle is configured: completed jobs then wait, visibly.
    """

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        publish_analysis: Callable[[int, int], None],
        publish_export: Callable[[int], None],
        *,
        can_analyse: bool = True,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.publish_analysis = publish_analysis
        self.publish_export = publish_export
        self.can_analyse = can_analyse
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reconcile(self, *, startup: bool = False, now: dt.datetime | None = None) -> dict[str, int]:
        """Run every recovery rule once.

        Parameters
        ----------
        startup : bool
            At start-up of the embedded node every ``analyzing``/``exporting`` job is
            orphaned (its worker was this process's child), whatever its lease says.
        now : datetime, optional
            Current time (tests).

        Returns
        -------
        dict
            How many jobs each rule touched.
        """
        now = now or utcnow()
        idle = now - dt.timedelta(seconds=self.settings.queue.lease_seconds)
        counts = {"queued": 0, "requeued": 0, "lease_expired": 0, "export": 0}
        analysis: list[tuple[int, int]] = []
        export: list[int] = []
        with self.sessions() as session:
            jobs = session.scalars(
                select(Job).where(
                    Job.state.in_(
                        [
                            JobState.COMPLETE,
                            JobState.QUEUED,
                            JobState.ANALYZING,
                            JobState.BUILT,
                            JobState.EXPORTING,
                            JobState.FAILED,
                        ]
                    )
                )
            ).all()
            for job in jobs:
                stale = job.updated_at <= idle
                lease_gone = startup or (
                    job.lease_expires_at is not None and job.lease_expires_at <= now
                )
                if job.state is JobState.COMPLETE and self.can_analyse:
                    if transition_if(session, job, JobState.QUEUED, detail="queued by reconciler"):
                        analysis.append((job.id, job.priority))
                        counts["queued"] += 1
                elif job.state is JobState.QUEUED and stale and self.can_analyse:
                    job.updated_at = now  # one re-publish per idle period
                    analysis.append((job.id, job.priority))
                    counts["requeued"] += 1
                elif job.state is JobState.ANALYZING and lease_gone:
                    lost = f"lease of {job.lease_owner} expired: worker lost"
                    if transition_if(session, job, JobState.QUEUED, detail=lost):
                        analysis.append((job.id, job.priority))
                        counts["lease_expired"] += 1
                elif job.state is JobState.EXPORTING and (startup or stale):
                    if transition_if(session, job, JobState.BUILT, detail="export interrupted"):
                        export.append(job.id)
                        counts["export"] += 1
                elif job.state in (JobState.BUILT, JobState.FAILED) and stale:
                    job.updated_at = now
                    export.append(job.id)
                    counts["export"] += 1
            session.commit()
        for job_id, priority in analysis:
            self.publish_analysis(job_id, priority)
        for job_id in export:
            self.publish_export(job_id)
        if any(counts.values()):
            logger.info("reconciler: %s", counts)
        return counts

    def start(self, interval: float = 30.0) -> None:
        """Run :meth:`reconcile` every ``interval`` seconds in a daemon thread."""

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.reconcile()
                except Exception:  # keep recovering; the next tick retries
                    logger.exception("reconciler tick failed")

        self._thread = threading.Thread(target=loop, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
