"""Admin actions are audited in the transaction of the change they record.

A failure between the change and its audit event (here: writing the event raises) must
leave neither: the job keeps its state, the study stays as it was, and the timeline has no
``admin`` event. When nothing fails, both are there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ingest_support import Stack, build_stack, phantom_bytes
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from spinexr.node.admin import actions
from spinexr.node.db.models import AuditEvent, Job, Study
from spinexr.node.db.states import JobState, StudyStatus
from spinexr.node.db.timeline import transition
from spinexr.node.ingest.assembler import StudyAssembler


class Quiet:
    """A dispatcher that records what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []

    def analysis(self, job_id: int, priority: int) -> None:
        self.sent.append(("analysis", job_id))

    def export(self, job_id: int) -> None:
        self.sent.append(("export", job_id))

    def queue(self, sessions: Any, job_id: int, detail: str) -> bool:
        self.sent.append(("queue", job_id))
        return True


class AuditFailedError(RuntimeError):
    """The database went away between the change and its audit event."""


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stack:
    monkeypatch.chdir(tmp_path)
    return build_stack(tmp_path, queue={"max_attempts": 1})


def _study(stack: Stack) -> str:
    uid = generate_uid()
    data, _ = phantom_bytes(1, study_uid=uid)
    stack.ingest.ingest([data], calling_ae="PACS", source="dimse")
    return uid


def _job_in(stack: Stack, state: JobState) -> int:
    uid = _study(stack)
    job_id = StudyAssembler(stack.settings, stack.sessions, "m@1").force_complete(uid)
    assert job_id is not None
    with stack.sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        transition(s, job, JobState.QUEUED)
        if state is JobState.FAILED:
            transition(s, job, JobState.ANALYZING)
            transition(s, job, JobState.FAILED, error="boom")
        s.commit()
    return job_id


def _admin_events(stack: Stack) -> int:
    with stack.sessions() as s:
        return int(s.scalar(select(func.count()).where(AuditEvent.event == "admin")) or 0)


def _events(stack: Stack) -> int:
    with stack.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def _job_state(stack: Stack, job_id: int) -> JobState:
    with stack.sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job.state


def _fail_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_args: Any, **_kwargs: Any) -> None:
        raise AuditFailedError("the database went away")

    monkeypatch.setattr(actions, "_audit", boom)


def test_retry_failing_before_its_audit_leaves_neither(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _job_in(stack, JobState.FAILED)
    before = _events(stack)
    _fail_audit(monkeypatch)
    dispatcher = Quiet()
    with pytest.raises(AuditFailedError):
        actions.retry(stack.sessions, dispatcher, job_id, "cli")
    assert _job_state(stack, job_id) is JobState.FAILED
    assert _events(stack) == before and _admin_events(stack) == 0
    assert dispatcher.sent == []


def test_cancel_failing_before_its_audit_leaves_neither(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _job_in(stack, JobState.QUEUED)
    before = _events(stack)
    _fail_audit(monkeypatch)
    with pytest.raises(AuditFailedError):
        actions.cancel(stack.sessions, job_id, "admin-api")
    assert _job_state(stack, job_id) is JobState.QUEUED
    assert _events(stack) == before and _admin_events(stack) == 0


def test_complete_failing_before_its_audit_leaves_neither(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    uid = _study(stack)
    before = _events(stack)
    _fail_audit(monkeypatch)
    dispatcher = Quiet()
    with pytest.raises(AuditFailedError):
        actions.complete_study(stack.settings, stack.sessions, dispatcher, uid, "admin-web")
    with stack.sessions() as s:
        study = s.scalar(select(Study).where(Study.study_instance_uid == uid))
        assert study is not None and study.status is StudyStatus.RECEIVING
        assert s.scalar(select(func.count()).select_from(Job)) == 0
    assert _events(stack) == before and _admin_events(stack) == 0
    assert dispatcher.sent == []


def test_actions_that_succeed_have_their_change_and_audit(stack: Stack) -> None:
    dispatcher = Quiet()
    failed = _job_in(stack, JobState.FAILED)
    actions.retry(stack.sessions, dispatcher, failed, "cli")
    assert _job_state(stack, failed) is JobState.QUEUED
    queued = _job_in(stack, JobState.QUEUED)
    actions.cancel(stack.sessions, queued, "admin-api")
    assert _job_state(stack, queued) is JobState.CANCELLED
    uid = _study(stack)
    outcome = actions.complete_study(stack.settings, stack.sessions, dispatcher, uid, "admin-web")
    with stack.sessions() as s:
        details = [
            (e.job_id, e.detail)
            for e in s.scalars(
                select(AuditEvent).where(AuditEvent.event == "admin").order_by(AuditEvent.id)
            )
        ]
    assert details == [
        (failed, "retry (analysis) requested by cli"),
        (queued, "cancel requested by admin-api"),
        (outcome.job_id, "completion requested by admin-web"),
    ]


def test_unknown_and_conflicting_jobs_are_refused_without_a_trace(stack: Stack) -> None:
    from spinexr.node.admin.errors import ConflictError, NotFoundError

    with pytest.raises(NotFoundError, match="no job 999"):
        actions.retry(stack.sessions, Quiet(), 999, "cli")
    with pytest.raises(NotFoundError, match="no job 999"):
        actions.cancel(stack.sessions, 999, "cli")
    queued = _job_in(stack, JobState.QUEUED)
    with pytest.raises(ConflictError, match="nothing to retry"):
        actions.retry(stack.sessions, Quiet(), queued, "cli")
    assert _admin_events(stack) == 0
