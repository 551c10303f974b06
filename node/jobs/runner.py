"""Running a job's analysis: claim with a lease, analyse, build the outputs, record.

The database is the source of truth. A queue message only says "there is work"; the worker
claims the most urgent queued job (a conditional UPDATE, so two workers never run the same
job), holds a lease while it works, and writes every state move to the study's timeline.
A job whose lease expires (a killed worker) is found by the reconciler and queued again.

While the bundle is being prepared (`spinexr.pipeline.preparation`: the demo's staged first
start), a job whose study needs models that are not ready yet is not claimed: it stays
queued, its timeline says once what it waits for, and its queue message comes back after
`WAIT_SECONDS`. Waiting costs no attempt.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from spinexr.node import phi
from spinexr.node.db.models import AuditEvent, Instance, Job, Result, utcnow
from spinexr.node.db.states import JobState
from spinexr.node.db.timeline import record, transition
from spinexr.node.ingest.rules import ANALYSE
from spinexr.node.jobs.conform import conform_header
from spinexr.node.jobs.failure import failed_study_result, readable_headers
from spinexr.node.jobs.sources import ct_evidence, one_per_ct_series
from spinexr.node.jobs.supersede import lineage
from spinexr.node.outputs.build import BuiltObject, build_outputs
from spinexr.node.outputs.persist import save_outputs
from spinexr.node.outputs.sr import SupersededReport
from spinexr.node.settings import Settings
from spinexr.pipeline.ct.series import CT_SOP_CLASSES
from spinexr.pipeline.results import StudyResult

logger = logging.getLogger(__name__)

RETRY_BASE_SECONDS = 10.0
RETRY_CAP_SECONDS = 600.0
WAIT_SECONDS = 20.0
"""How often a job waiting for its models is looked at again."""

WAITING = "waiting"
"""Timeline event of a job that waits for models being prepared."""


def worker_id() -> str:
    """Identify this process in leases (host and pid)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class WorkerLostError(RuntimeError):
    """A job's earlier attempts all ended with their worker gone."""


@dataclass(frozen=True)
class RunOutcome:
    """What happened to a claimed job."""

    job_id: int
    state: JobState
    retry_in: float | None = None


class JobRunner:
    """Claims and analyses jobs.

    Parameters
    ----------
    settings : Settings
        Lease length, attempts, output profile, folders.
    sessions : sessionmaker
        Database sessions.
    pipeline : callable
        Returns the (warm) :class:`spinexr.pipeline.engine.Pipeline` of this process.
    waiting : callable, optional
        ``waiting(radiographs, ct)``: what a study holding those waits for (models being
        prepared), or None when it can be analysed now (`spinexr.pipeline.preparation.
        waiting_for`); None: nothing ever waits.
    """

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        pipeline: Callable[[], Any],
        waiting: Callable[[bool, bool], str | None] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.pipeline = pipeline
        self.waiting = waiting
        self.owner = worker_id()

    # ------------------------------------------------------------------ claiming
    def claim(self, preferred: int | None = None) -> int | None:
        """Claim the most urgent queued job (``preferred`` wins ties of priority).

        Parameters
        ----------
        preferred : int, optional
            The job the queue message named.

        Returns
        -------
        int or None
            The claimed job's id, or None when nothing is queued.
        """
        lease = dt.timedelta(seconds=self.settings.queue.lease_seconds)
        with self.sessions() as session:
            for _ in range(5):  # another worker may win the race for a candidate
                candidates = session.execute(
                    select(Job.id, Job.priority)
                    .where(Job.state == JobState.QUEUED)
                    .order_by(Job.priority.desc(), Job.id)
                    .limit(20)
                ).all()
                if not candidates:
                    return None
                ready: list[tuple[int, int]] = [(i, p) for i, p in candidates]
                if self._preparing():  # once per claim; no query when nothing is prepared
                    ready = [(i, p) for i, p in candidates if not self._waits(session, i)]
                    session.commit()  # the waiting jobs' timeline events
                if not ready:
                    return None
                top = ready[0][1]
                ids = [i for i, p in ready if p == top]
                job_id = preferred if preferred in ids else ids[0]
                now = utcnow()
                won = session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state == JobState.QUEUED)
                    .values(
                        state=JobState.ANALYZING,
                        lease_owner=self.owner,
                        lease_expires_at=now + lease,
                        attempts=Job.attempts + 1,
                        updated_at=now,
                    )
                ).rowcount  # type: ignore[attr-defined]
                if not won:
                    session.rollback()
                    continue
                job = session.get(Job, job_id)
                assert job is not None
                session.refresh(job)
                record(
                    session,
                    job.study,
                    "state",
                    job=job,
                    from_state=JobState.QUEUED,
                    to_state=JobState.ANALYZING,
                    detail=f"attempt {job.attempts} on {self.owner}",
                )
                session.commit()
                return job_id
        return None

    def is_waiting(self, job_id: int) -> bool:
        """Whether a queued job waits for models being prepared (its message should return)."""
        if not self._preparing():
            return False
        with self.sessions() as session:
            job = session.get(Job, job_id)
            waits = (
                job is not None and job.state is JobState.QUEUED and self._waits(session, job_id)
            )
            session.commit()
            return waits

    def _preparing(self) -> bool:
        """Whether any study would wait now (a bundle is being prepared)."""
        return self.waiting is not None and self.waiting(True, True) is not None

    def _waits(self, session: Session, job_id: int) -> bool:
        """Whether the job waits; its timeline says so once per reason (no commit).

        Only called while `_preparing`.
        """
        assert self.waiting is not None
        job = session.get(Job, job_id)
        assert job is not None
        classes = set(
            session.scalars(
                select(Instance.sop_class_uid)
                .where(Instance.study_id == job.study_id, Instance.decision == ANALYSE)
                .distinct()
            )
        )
        reason = self.waiting(bool(classes - CT_SOP_CLASSES), bool(classes & CT_SOP_CLASSES))
        if reason is None:
            return False
        last = session.scalar(
            select(AuditEvent.detail)
            .where(AuditEvent.job_id == job_id)
            .order_by(AuditEvent.id.desc())
            .limit(1)
        )
        said = f"waiting: {reason.split(' (')[0]}"
        if last != said:
            record(session, job.study, WAITING, job=job, detail=said)
            logger.info("job %s: %s", job_id, said)
        return True

    # ------------------------------------------------------------------ lease
    @contextlib.contextmanager
    def lease_kept(self, job_id: int) -> Iterator[None]:
        """Renew this runner's lease on ``job_id`` every third of a lease while the block runs.

        A long analysis (a large study on a CPU, a loaded machine) must not look like a lost
        worker: without renewal the reconciler would queue the job again while it still runs,
        and the study would be analysed twice. A killed worker stops renewing, so its lease
        still runs out. Renewal ends early when the job is no longer this runner's.

        Parameters
        ----------
        job_id : int
            A job this runner claimed.
        """
        lease = dt.timedelta(seconds=self.settings.queue.lease_seconds)
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(lease.total_seconds() / 3):
                try:
                    with self.sessions() as session:
                        kept = session.execute(
                            update(Job)
                            .where(
                                Job.id == job_id,
                                Job.state == JobState.ANALYZING,
                                Job.lease_owner == self.owner,
                            )
                            .values(lease_expires_at=utcnow() + lease)
                        ).rowcount  # type: ignore[attr-defined]
                        session.commit()
                except SQLAlchemyError as exc:  # try again next period
                    logger.warning("job %s: lease not renewed: %s", job_id, type(exc).__name__)
                    continue
                if not kept:
                    return

        thread = threading.Thread(target=renew, name=f"lease-{job_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    # ------------------------------------------------------------------ analysis
    def _latest(self, session: Session, job: Job, *, analysable: bool) -> list[Instance]:
        """Return the latest version of each instance of the job's study (analysable ones)."""
        query = select(Instance).where(Instance.study_id == job.study_id)
        if analysable:
            query = query.where(Instance.decision == ANALYSE)
        rows = session.scalars(
            query.order_by(Instance.sop_instance_uid, Instance.version.desc())
        ).all()
        latest: dict[str, Instance] = {}
        for row in rows:
            latest.setdefault(row.sop_instance_uid, row)
        return list(latest.values())

    def _sources(self, session: Session, job: Job) -> tuple[list[pydicom.Dataset], list[Path]]:
        """Read the study's radiographs whole; list its CT files (the CT stage reads them).

        A CT study has hundreds of instances: their pixels are decoded once, into the
        volume, never held as datasets.
        """
        spool = self.settings.storage.spool_dir
        sources: list[pydicom.Dataset] = []
        ct_files: list[Path] = []
        for r in self._latest(session, job, analysable=True):
            path = spool / r.path
            if r.sop_class_uid in CT_SOP_CLASSES:
                if not path.is_file():
                    raise RuntimeError(f"instance {r.sop_instance_uid} is missing from the spool")
                ct_files.append(path)
                continue
            try:
                sources.append(pydicom.dcmread(path))
            except FileNotFoundError:
                raise RuntimeError(
                    f"instance {r.sop_instance_uid} is missing from the spool"
                ) from None
        return sources, ct_files

    def _predecessor(self, session: Session, job: Job) -> tuple[SupersededReport | None, int]:
        # The SR the PACS really has (a cancelled job's SR that never got out is skipped),
        # and how many result sets reached it before this one.
        found = lineage(session, job)
        sr = found.predecessor
        if sr is None:
            return None, found.revision
        report = SupersededReport(
            study_instance_uid=job.study.study_instance_uid,
            series_instance_uid=sr.series_instance_uid,
            sop_instance_uid=sr.sop_instance_uid,
            sop_class_uid=sr.sop_class_uid,
        )
        return report, found.revision

    def _still_mine(self, job: Job) -> bool:
        """Whether this runner still holds ``job`` (not cancelled, superseded or lost)."""
        return job.state is JobState.ANALYZING and job.lease_owner == self.owner

    def run(self, job_id: int) -> RunOutcome:
        """Analyse a claimed job and build its outputs (``analyzing → built``).

        Expected failures (unreadable files, model errors) fail the job; it is queued again
        after a backoff until ``max_attempts``, then ``dead``. A job that stopped being this
        runner's meanwhile (cancelled when a newer job of its study superseded it, or queued
        again after its lease expired) is left alone and its result is discarded.

        Parameters
        ----------
        job_id : int
            A job this runner claimed.

        Returns
        -------
        RunOutcome
            The state reached and, for a retry, its delay.
        """
        values: frozenset[str] = frozenset()  # the patient's, kept out of errors and logs
        try:
            with self.sessions() as session:
                job = session.get(Job, job_id)
                assert job is not None
                if not self._still_mine(job):
                    # Cancelled (superseded) or re-queued between the claim and now.
                    logger.info("job %s: %s before analysis; nothing to do", job_id, job.state)
                    return RunOutcome(job_id, job.state)
                if job.attempts > job.max_attempts:
                    # Every earlier attempt lost its worker (killed, out of memory): one more
                    # would likely end the same way; the failure report goes out instead.
                    raise WorkerLostError(
                        f"the worker was lost in each of {job.attempts - 1} attempts"
                    )
                sources, ct_files = self._sources(session, job)
                values = phi.identifying_values([*sources, *readable_headers(ct_files[:1])])
                _conform(job_id, sources)
                predecessor, revision = self._predecessor(session, job)
                key = job.idempotency_key
                study_uid = job.study.study_instance_uid
            if not sources and not ct_files:
                raise RuntimeError("no analysable instance is left in the spool")
            with self.lease_kept(job_id):
                analysis = self.pipeline().analyze(
                    sources, ct_files=ct_files, study_instance_uid=study_uid
                )
                result = analysis.result
                ct_headers = ct_evidence(ct_files, result)
                _conform(job_id, ct_headers)
                built = build_outputs(
                    [*sources, *ct_headers],
                    result,
                    self.settings,
                    job_key=key,
                    predecessor=predecessor,
                    revision=revision,
                    ct_reformat=analysis.ct_reformat,
                )
            with self.sessions() as session:
                job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
                assert job is not None
                if not self._still_mine(job):
                    # A job superseded (cancelled) or re-queued as lost while it was analysed:
                    # its result is not recorded and nothing of it is exported.
                    logger.warning(
                        "job %s: %s while analysing; result discarded", job_id, job.state
                    )
                    return RunOutcome(job_id, job.state)
                self._save(session, job, result, built)
                transition(
                    session,
                    job,
                    JobState.BUILT,
                    detail=f"{result.outcome.value}; {len(built)} object(s) built",
                )
                session.commit()
            return RunOutcome(job_id, JobState.BUILT)
        except Exception as exc:  # a failed analysis must never leave the job hanging
            logger.error("job %s: analysis failed\n%s", job_id, phi.format_exception(exc, values))
            return self.fail(job_id, phi.safe_error(exc, values)[:500])

    def _save(
        self, session: Session, job: Job, result: StudyResult, built: list[BuiltObject]
    ) -> None:
        """Record a job's result row and output objects (no commit)."""
        row = session.scalar(select(Result).where(Result.job_id == job.id)) or Result(job_id=job.id)
        row.outcome = result.outcome.value
        row.probability = result.probability
        row.threshold = result.threshold
        row.abnormal = result.decision
        row.bundle_name = result.provenance.bundle_name
        row.bundle_version = result.provenance.bundle_version
        row.device_uid = result.provenance.device_uid
        row.payload = result.model_dump(mode="json")
        session.add(row)
        save_outputs(session, job, built, self.settings.storage.output_dir)
        job.bundle_version = f"{result.provenance.bundle_name}@{result.provenance.bundle_version}"

    def fail(self, job_id: int, error: str) -> RunOutcome:
        """Record a failed attempt: back to ``queued`` after a backoff, or ``dead``.

        Only a job this runner still holds is moved: a job cancelled meanwhile (superseded
        by a newer job of its study) stays cancelled instead of being retried.

        Parameters
        ----------
        job_id : int
            The job.
        error : str
            Why (no PHI: exception types and UIDs).

        Returns
        -------
        RunOutcome
            ``queued`` with a delay, or ``dead``; else the state the job is in.
        """
        with self.sessions() as session:
            job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
            assert job is not None
            if not self._still_mine(job):
                # Cancelled (superseded) or taken back while it ran: not retried from here.
                logger.info("job %s: attempt failed after it became %s", job_id, job.state)
                return RunOutcome(job_id, job.state)
            transition(session, job, JobState.FAILED, error=error)
            if job.attempts >= job.max_attempts:
                # The radiologist is told: the "analysis failed" report goes out instead.
                reported, detail = self._report_failure(session, job, error)
                if reported:
                    transition(session, job, JobState.BUILT, detail=detail)
                    session.commit()
                    return RunOutcome(job_id, JobState.BUILT)
                transition(
                    session,
                    job,
                    JobState.DEAD,
                    error=f"dead after {job.attempts} attempts: {error}; {detail}"[:1000],
                )
                session.commit()
                return RunOutcome(job_id, JobState.DEAD)
            transition(session, job, JobState.QUEUED, detail="retry after failure")
            session.commit()
            delay = min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2 ** max(0, job.attempts - 1))
            return RunOutcome(job_id, JobState.QUEUED, delay)

    def _report_failure(self, session: Session, job: Job, error: str) -> tuple[bool, str]:
        """Build and save the "analysis failed" SR of a job out of attempts.

        Parameters
        ----------
        session : Session
            The open session (the caller commits).
        job : Job
            The job, in ``failed`` after its last attempt.
        error : str
            The last attempt's error (no PHI).

        Returns
        -------
        tuple of (bool, str)
            Whether the report was built, and the timeline detail; when not even that was
            possible (no readable header in the study, or building failed) the detail says
            why, and the job goes ``dead`` with it in its error.
        """
        spool = self.settings.storage.spool_dir
        latest = self._latest(session, job, analysable=False)
        analysable = [spool / r.path for r in latest if r.decision == ANALYSE]
        others = [spool / r.path for r in latest if r.decision != ANALYSE]
        headers = one_per_ct_series(readable_headers(analysable)) or readable_headers(others)[:1]
        _conform(job.id, headers)
        reason = f"analysis failed after {job.attempts} attempts ({error.split(':', 1)[0]})"
        try:
            if not headers:
                raise RuntimeError("no readable instance in the study")
            predecessor, revision = self._predecessor(session, job)
            result = failed_study_result(
                headers,
                study_instance_uid=job.study.study_instance_uid,
                reason=reason,
                pipeline=self.pipeline,
                uid_root=self.settings.node.uid_root,
            )
            built = build_outputs(
                headers,
                result,
                self.settings,
                job_key=job.idempotency_key,
                predecessor=predecessor,
                revision=revision,
            )
            self._save(session, job, result, built)
        except Exception as exc:  # the job goes dead with both reasons
            values = phi.identifying_values(headers)
            logger.error(
                "job %s: the analysis-failed report could not be built\n%s",
                job.id,
                phi.format_exception(exc, values),
            )
            return False, f"no analysis-failed report: {phi.safe_error(exc, values)}"[:400]
        logger.warning("job %s: %s; sending the analysis-failed report", job.id, reason)
        return True, f"{reason}; analysis-failed report built ({len(built)} object(s))"


def _conform(job_id: int, datasets: list[pydicom.Dataset]) -> None:
    """Repair the header values the builders would refuse (`spinexr.node.jobs.conform`)."""
    for ds in datasets:
        repaired = conform_header(ds)
        if repaired:
            logger.info(
                "job %s: %s: %s not valid DICOM, repaired for the outputs",
                job_id,
                ds.get("SOPInstanceUID", "?"),
                ", ".join(repaired),
            )
