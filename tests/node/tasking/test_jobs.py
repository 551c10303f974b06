"""Claiming, priorities, failures, leases and recovery against a real database."""

from __future__ import annotations

import datetime as dt
import shutil
import time

import pytest
from ingest_support import Stack, phantom_bytes
from pydicom.uid import generate_uid
from sqlalchemy import select

from spinexr.node.admin.jobs import cancel_job, list_jobs, retry_job, status
from spinexr.node.db.models import AuditEvent, Job, utcnow
from spinexr.node.db.states import JobState, Priority
from spinexr.node.errors import SpinexrError
from spinexr.node.ingest.assembler import StudyAssembler
from spinexr.node.jobs.reconciler import Reconciler
from spinexr.node.jobs.runner import JobRunner


def no_pipeline():
    raise AssertionError("the pipeline is not needed here")


def queued_job(stack: Stack, ae: str = "PACS", seed: int = 1) -> int:
    uid = generate_uid()
    data, _ = phantom_bytes(seed, study_uid=uid)
    stack.ingest.ingest([data], calling_ae=ae, source="dimse")
    job_id = StudyAssembler(stack.settings, stack.sessions, "m@1").force_complete(uid)
    assert job_id is not None
    with stack.sessions() as s:
        job = s.get(Job, job_id)
        from spinexr.node.db.timeline import transition

        transition(s, job, JobState.QUEUED)
        s.commit()
    return job_id


def state(stack: Stack, job_id: int) -> Job:
    with stack.sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def test_urgent_jobs_overtake_routine_ones(tmp_path, monkeypatch) -> None:
    from ingest_support import build_stack

    monkeypatch.chdir(tmp_path)
    stack = build_stack(tmp_path, study={"urgent_calling_aets": ["ER"]})
    routine = [queued_job(stack, "PACS", seed=i) for i in range(1, 3)]
    urgent = queued_job(stack, "ER", seed=5)
    assert state(stack, urgent).priority == Priority.URGENT
    runner = JobRunner(stack.settings, stack.sessions, no_pipeline)
    # The message named a routine job, but the urgent one is claimed first.
    assert runner.claim(preferred=routine[0]) == urgent
    assert runner.claim(preferred=routine[1]) == routine[1]  # preferred wins a tie
    assert runner.claim() == routine[0]
    assert runner.claim() is None


def test_a_job_is_claimed_once(stack: Stack) -> None:
    job_id = queued_job(stack)
    a = JobRunner(stack.settings, stack.sessions, no_pipeline)
    b = JobRunner(stack.settings, stack.sessions, no_pipeline)
    b.owner = "other-worker:2"
    assert a.claim(job_id) == job_id
    assert b.claim(job_id) is None
    job = state(stack, job_id)
    assert job.state is JobState.ANALYZING and job.lease_owner == a.owner and job.attempts == 1


def test_failures_retry_with_backoff_then_dead(stack: Stack) -> None:
    job_id = queued_job(stack)
    shutil.rmtree(stack.settings.storage.spool_dir)  # a real failure: the files are gone
    runner = JobRunner(stack.settings, stack.sessions, no_pipeline)
    delays = []
    for _ in range(stack.settings.queue.max_attempts):
        assert runner.claim() == job_id
        outcome = runner.run(job_id)
        delays.append(outcome.retry_in)
    assert outcome.state is JobState.DEAD and delays[-1] is None
    assert delays[:3] == [10.0, 20.0, 40.0]
    job = state(stack, job_id)
    assert job.state is JobState.DEAD and "is missing from the spool" in job.last_error
    assert list_jobs(stack.sessions, "dead")[0]["id"] == job_id


def test_expired_lease_is_requeued_by_the_reconciler(stack: Stack) -> None:
    job_id = queued_job(stack)
    runner = JobRunner(stack.settings, stack.sessions, no_pipeline)
    runner.claim()
    sent: list[tuple[int, int]] = []
    rec = Reconciler(
        stack.settings, stack.sessions, lambda j, p: sent.append((j, p)), lambda j: None
    )
    assert rec.reconcile()["lease_expired"] == 0  # lease still valid
    later = utcnow() + dt.timedelta(seconds=stack.settings.queue.lease_seconds + 1)
    assert rec.reconcile(now=later)["lease_expired"] == 1
    assert sent == [(job_id, state(stack, job_id).priority)]
    assert state(stack, job_id).state is JobState.QUEUED
    with stack.sessions() as s:
        details = [e.detail for e in s.scalars(select(AuditEvent)) if e.detail]
    assert any("expired: worker lost" in d for d in details)


def test_a_running_analysis_keeps_its_lease(stack: Stack) -> None:
    stack.settings.queue.lease_seconds = 10  # renewed every 3.3 s
    job_id = queued_job(stack)
    runner = JobRunner(stack.settings, stack.sessions, no_pipeline)
    runner.claim()
    claimed = state(stack, job_id).lease_expires_at
    rec = Reconciler(stack.settings, stack.sessions, lambda j, p: None, lambda j: None)
    with runner.lease_kept(job_id):
        time.sleep(4.5)  # one renewal
        renewed = state(stack, job_id).lease_expires_at
        assert renewed > claimed + dt.timedelta(seconds=3)
        # Past the claimed lease but within the renewed one: not a lost worker.
        assert rec.reconcile(now=claimed + dt.timedelta(seconds=1))["lease_expired"] == 0
    time.sleep(3.6)  # no renewal once the analysis is over
    assert state(stack, job_id).lease_expires_at == renewed
    assert state(stack, job_id).state is JobState.ANALYZING


def test_startup_requeues_orphans_and_publishes_completed_jobs(stack: Stack) -> None:
    running = queued_job(stack, seed=1)
    JobRunner(stack.settings, stack.sessions, no_pipeline).claim()
    uid = generate_uid()
    data, _ = phantom_bytes(3, study_uid=uid)
    stack.ingest.ingest([data], calling_ae="PACS", source="dimse")
    completed = StudyAssembler(stack.settings, stack.sessions, "m@1").force_complete(uid)
    sent: list[int] = []
    rec = Reconciler(stack.settings, stack.sessions, lambda j, p: sent.append(j), lambda j: None)
    counts = rec.reconcile(startup=True)
    assert counts["lease_expired"] == 1 and counts["queued"] == 1
    assert sorted(sent) == sorted([running, completed])
    # Without a bundle, completed jobs wait (visibly) instead of being queued.
    idle = Reconciler(
        stack.settings,
        stack.sessions,
        lambda j, p: sent.append(j),
        lambda j: None,
        can_analyse=False,
    )
    assert idle.reconcile()["queued"] == 0


def test_admin_retry_cancel_and_status(stack: Stack) -> None:
    job_id = queued_job(stack)
    with pytest.raises(SpinexrError, match="nothing to retry"):
        retry_job(stack.sessions, job_id)
    cancel_job(stack.sessions, job_id)
    assert state(stack, job_id).state is JobState.CANCELLED
    assert retry_job(stack.sessions, job_id) == "analysis"
    assert state(stack, job_id).state is JobState.QUEUED
    JobRunner(stack.settings, stack.sessions, no_pipeline).claim()
    info = status(stack.sessions)
    assert info["jobs"]["analyzing"] == 1
    assert len(info["workers_seen_last_hour"]) == 1


def test_cli_complete_cancel_and_retry_are_the_admin_actions(tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner
    from ingest_support import build_stack

    from spinexr.node.cli import cli

    monkeypatch.chdir(tmp_path)
    stack = build_stack(tmp_path)
    monkeypatch.setenv("SPINEXR_STORAGE__DATA_DIR", str(tmp_path / "var"))
    uid = generate_uid()
    stack.ingest.ingest([phantom_bytes(1, study_uid=uid)[0]], calling_ae="PACS", source="dimse")

    def run(*args: str) -> str:
        result = CliRunner().invoke(cli, list(args))
        assert result.exit_code == 0, result.output
        return result.stdout.strip()

    done = run("studies", "complete", uid)
    assert done.startswith("study complete; job ") and "no model bundle" in done
    job_id = int(done.split()[3])
    assert run("jobs", "cancel", str(job_id)) == f"job {job_id} cancelled"
    assert run("jobs", "retry", str(job_id)) == f"job {job_id}: analysis queued again"
    assert state(stack, job_id).state is JobState.QUEUED
    with stack.sessions() as s:
        details = s.scalars(select(AuditEvent.detail).where(AuditEvent.event == "admin")).all()
    assert details == [
        "completion requested by cli",
        "cancel requested by cli",
        "retry (analysis) requested by cli",
    ]
    missing = CliRunner().invoke(cli, ["jobs", "retry", "999"])
    assert missing.exit_code != 0 and "no job 999" in missing.stderr


def test_a_job_waits_for_models_being_prepared_without_spending_attempts(stack: Stack) -> None:
    """While its models are prepared a job stays queued, says so once, then runs."""
    waiting_job = queued_job(stack, seed=1)
    other_job = queued_job(stack, seed=2)
    ready: set[str] = set()
    asked: list[tuple[bool, bool]] = []

    def waiting(radiographs: bool, ct: bool) -> str | None:
        asked.append((radiographs, ct))
        if "radiograph" in ready:
            return None
        return "radiograph models being prepared (step 2/8: training)"

    runner = JobRunner(stack.settings, stack.sessions, no_pipeline, waiting)
    for _ in range(3):  # every message finds it waiting
        assert runner.claim(preferred=waiting_job) is None
        assert runner.is_waiting(waiting_job) and runner.is_waiting(other_job)
    assert (True, False) in asked and (False, True) not in asked  # a radiograph study
    job = state(stack, waiting_job)
    assert job.state is JobState.QUEUED and job.attempts == 0
    with stack.sessions() as s:
        said = [
            e.detail for e in s.scalars(select(AuditEvent).where(AuditEvent.job_id == waiting_job))
        ]
    assert said.count("waiting: radiograph models being prepared") == 1, said
    ready.add("radiograph")
    assert not runner.is_waiting(waiting_job)
    assert runner.claim(preferred=waiting_job) == waiting_job
    assert state(stack, waiting_job).attempts == 1
    assert runner.claim() == other_job
