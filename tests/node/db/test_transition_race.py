"""Two processes deciding the same job move at once: exactly one of them makes it.

The kill soak found the assembler and the reconciler both queueing one completed job (two
``complete -> queued`` events, two messages). Moves decided from what a session read are
compare-and-set at the database now.
"""

from __future__ import annotations

from pathlib import Path

from ingest_support import build_stack
from sqlalchemy import select

from spinexr.node.db.models import AuditEvent, Job, Study
from spinexr.node.db.states import JobState
from spinexr.node.db.timeline import transition_if
from spinexr.node.jobs.reconciler import Reconciler
from spinexr.node.tasking import dispatch


def completed_job(tmp_path: Path):
    stack = build_stack(tmp_path)
    with stack.sessions() as s:
        study = Study(study_instance_uid="1.2.3.4")
        job = Job(study=study, idempotency_key="k", state=JobState.COMPLETE)
        s.add_all([study, job])
        s.commit()
        return stack, job.id


def moves(stack, job_id: int) -> list[tuple[str | None, str | None]]:
    with stack.sessions() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.job_id == job_id))
        return [(e.from_state, e.to_state) for e in events if e.to_state]


def test_a_move_decided_from_a_stale_read_is_not_made(tmp_path: Path) -> None:
    stack, job_id = completed_job(tmp_path)
    with stack.sessions() as late:
        seen = late.get(Job, job_id)  # reads "complete"
        assert seen is not None and seen.state is JobState.COMPLETE
        with stack.sessions() as early:  # another process queues it first
            job = early.get(Job, job_id)
            assert job is not None and transition_if(early, job, JobState.QUEUED)
            early.commit()
        assert not transition_if(late, seen, JobState.QUEUED)
        assert seen.state is JobState.QUEUED  # reloaded
        late.commit()
    assert moves(stack, job_id) == [("complete", "queued")]


def test_assembler_and_reconciler_queue_a_job_once(tmp_path: Path, monkeypatch) -> None:
    stack, job_id = completed_job(tmp_path)
    published: list[int] = []
    monkeypatch.setattr(dispatch, "publish_analysis", lambda j, _p: published.append(j))

    def queue_meanwhile(*_args: object) -> None:
        # the assembler queues the job while the reconciler holds its read of it
        assert dispatch.queue_job(stack.sessions, job_id, detail="study complete")

    reconciler = Reconciler(
        stack.settings, stack.sessions, lambda j, _p: published.append(j), lambda _j: None
    )
    with monkeypatch.context() as m:
        original = transition_if

        def racing(session, job, new_state, *, detail=None):
            queue_meanwhile()
            return original(session, job, new_state, detail=detail)

        m.setattr("spinexr.node.jobs.reconciler.transition_if", racing)
        counts = reconciler.reconcile()
    assert counts["queued"] == 0
    assert published == [job_id]  # one message
    assert moves(stack, job_id) == [("complete", "queued")]
