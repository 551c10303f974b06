"""Study assembly: completion timer, admin completion, one job per instances and model.

A study is complete when no instance arrived for ``study.completion_seconds`` (or an admin
says so); completing it creates at most one job per (instances, model version). A study's
new job supersedes its older ones: those not finished are cancelled
(`spinexr.node.jobs.supersede.cancel_superseded`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from spinexr.node.db.models import Job, Study, utcnow
from spinexr.node.db.states import JobState, StudyStatus
from spinexr.node.db.timeline import record
from spinexr.node.errors import SpinexrError
from spinexr.node.ingest.rules import ANALYSE
from spinexr.node.jobs.supersede import cancel_superseded
from spinexr.node.settings import Settings
from spinexr.pipeline.preparation import read_preparation

logger = logging.getLogger(__name__)

Audit = Callable[[Session, Study, Job | None], None]
"""Records an admin's request in the transaction of the change it asked for."""


def model_identity(bundle: Path | None) -> str:
    """Return the model version that enters the idempotency key.

    Parameters
    ----------
    bundle : Path or None
        The configured bundle folder.

    Returns
    -------
    str
        ``name@version`` from the bundle manifest (or from its preparation, while it is
        being prepared), or ``none``.
    """
    if bundle is None:
        return "none"
    try:
        manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        prep = read_preparation(bundle)  # not written yet: the identity it will have
        return prep.identity if prep is not None else f"unreadable:{bundle}"
    return f"{manifest.get('name', '?')}@{manifest.get('version', '?')}"


def idempotency_key(study_uid: str, instances: list[tuple[str, str]], model: str) -> str:
    """Key identifying one analysis: the study, its analysable instances, the model.

    Parameters
    ----------
    study_uid : str
        Study Instance UID.
    instances : list of (str, str)
        (SOP Instance UID, content hash) of every analysable instance.
    model : str
        From :func:`model_identity`.

    Returns
    -------
    str
        A hex digest (64 characters).
    """
    h = hashlib.sha256()
    h.update(study_uid.encode())
    for sop, sha in sorted(instances):
        h.update(f"|{sop}:{sha}".encode())
    h.update(f"|model={model}".encode())
    return h.hexdigest()


class StudyAssembler:
    """Completes quiet studies and creates their jobs.

    Parameters
    ----------
    settings : Settings
        ``study.completion_seconds`` and ``queue.max_attempts``.
    sessions : sessionmaker
        Database sessions.
    model : str
        From :func:`model_identity`.
    publish : callable, optional
        Called with each new job id *after* the commit (hands it to the queue).
    """

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        model: str,
        publish: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.model = model
        self.publish = publish
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ completion
    def complete_due(self, now: dt.datetime | None = None) -> list[int]:
        """Complete every study quiet for ``completion_seconds``.

        Parameters
        ----------
        now : datetime, optional
            Current time (tests).

        Returns
        -------
        list of int
            Ids of jobs created.
        """
        now = now or utcnow()
        cutoff = now - dt.timedelta(seconds=self.settings.study.completion_seconds)
        with self.sessions() as session:
            due = session.scalars(
                select(Study.id).where(
                    Study.status == StudyStatus.RECEIVING, Study.last_received_at <= cutoff
                )
            ).all()
        created: list[int] = []
        for study_id in due:
            job_id = self._complete(study_id, cutoff, forced=False)
            if job_id is not None:
                created.append(job_id)
        return created

    def force_complete(self, study_uid: str, audit: Audit | None = None) -> int | None:
        """Complete a study now (admin action).

        Parameters
        ----------
        study_uid : str
            Study Instance UID.
        audit : callable, optional
            ``audit(session, study, job)`` records the admin's request in the transaction
            that completes the study (``job``: the new job, or None when none was needed),
            so that the change and its record are committed together or not at all.

        Returns
        -------
        int or None
            The new job's id, or None when no job was needed.

        Raises
        ------
        SpinexrError
            If the study is unknown.
        """
        with self.sessions() as session:
            study_id = session.scalar(select(Study.id).where(Study.study_instance_uid == study_uid))
        if study_id is None:
            raise SpinexrError(f"no study {study_uid}")
        return self._complete(study_id, None, forced=True, audit=audit)

    def _complete(
        self,
        study_id: int,
        cutoff: dt.datetime | None,
        *,
        forced: bool,
        audit: Audit | None = None,
    ) -> int | None:
        now = utcnow()
        with self.sessions() as session:
            stmt = update(Study).where(Study.id == study_id)
            if not forced:
                # Re-checked in the same statement: an instance that arrived since the
                # query keeps the study open.
                stmt = stmt.where(
                    Study.status == StudyStatus.RECEIVING, Study.last_received_at <= cutoff
                )
            changed = session.execute(
                stmt.values(status=StudyStatus.COMPLETE, completed_at=now)
            ).rowcount  # type: ignore[attr-defined]
            if not changed:
                session.rollback()
                return None
            study = session.get(Study, study_id)
            assert study is not None
            session.refresh(study)
            analysable = [
                (i.sop_instance_uid, i.content_hash)
                for i in study.instances
                if i.decision == ANALYSE
            ]
            how = "forced by admin" if forced else "completion timer"
            if not analysable:
                record(
                    session,
                    study,
                    "complete",
                    detail=f"{how}; {len(study.instances)} instance(s), "
                    f"none for analysis ({study.decision})",
                )
                if audit is not None:
                    audit(session, study, None)
                session.commit()
                logger.info("study %s complete: nothing to analyse", study.study_instance_uid)
                return None
            key = idempotency_key(study.study_instance_uid, analysable, self.model)
            existing = session.scalar(select(Job).where(Job.idempotency_key == key))
            if existing is not None:
                record(
                    session,
                    study,
                    "complete",
                    job=existing,
                    detail=f"{how}; same instances and model as job {existing.id}: no new job",
                )
                if audit is not None:
                    audit(session, study, None)
                session.commit()
                logger.info(
                    "study %s complete: already covered by job %s",
                    study.study_instance_uid,
                    existing.id,
                )
                return None
            previous = session.scalar(
                select(Job).where(Job.study_id == study.id).order_by(Job.id.desc()).limit(1)
            )
            job = Job(
                study=study,
                state=JobState.COMPLETE,
                priority=study.priority,
                idempotency_key=key,
                max_attempts=self.settings.queue.max_attempts,
                bundle_version=self.model,
                superseded_job_id=previous.id if previous is not None else None,
            )
            session.add(job)
            session.flush()
            detail = f"{how}; {len(analysable)} instance(s) for analysis"
            if previous is not None:
                detail += f"; supersedes job {previous.id}"
            record(
                session,
                study,
                "state",
                job=job,
                from_state=JobState.RECEIVED,
                to_state=JobState.COMPLETE,
                detail=detail,
            )
            cancel_superseded(session, job, self.settings.output.superseded)
            if audit is not None:
                audit(session, study, job)
            session.commit()
            job_id = job.id
            logger.info("study %s complete: job %s created", study.study_instance_uid, job_id)
        if self.publish is not None:
            self.publish(job_id)
        return job_id

    # ------------------------------------------------------------------ background loop
    def start(self, interval: float | None = None) -> None:
        """Run :meth:`complete_due` periodically in a daemon thread."""
        period = interval or max(0.2, min(1.0, self.settings.study.completion_seconds / 4))

        def loop() -> None:
            while not self._stop.wait(period):
                try:
                    self.complete_due()
                except Exception:  # keep the timer alive; the next tick retries
                    logger.exception("study assembler tick failed")

        self._thread = threading.Thread(target=loop, name="study-assembler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background loop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
