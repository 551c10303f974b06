from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from spinexr.node.db.engine import make_engine, make_session_factory
from spinexr.node.db.migrate import upgrade
from spinexr.node.db.models import AuditEvent, Instance, Job, Study
from spinexr.node.db.states import TRANSITIONS, JobState, can_transition
from spinexr.node.db.timeline import transition
from spinexr.node.errors import InvalidTransitionError

HAPPY_PATH = [
    JobState.COMPLETE,
    JobState.QUEUED,
    JobState.ANALYZING,
    JobState.BUILT,
    JobState.EXPORTING,
    JobState.EXPORTED,
    JobState.VERIFIED,
]


def _engines(tmp_path: Path, request: pytest.FixtureRequest) -> Engine:
    if request.param == "sqlite":
        return make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    return make_engine(request.getfixturevalue("postgres_url"))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def session(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Session]:
    engine = _engines(tmp_path, request)
    upgrade(engine)
    factory = make_session_factory(engine)
    with factory() as s:
        yield s
    if engine.dialect.name == "postgresql":
        from spinexr.node.db.migrate import downgrade

        downgrade(engine, "base")
    engine.dispose()


def new_job(session: Session, uid: str = "1.2.3.4") -> Job:
    study = Study(study_instance_uid=uid, calling_ae="PACS")
    job = Job(study=study, idempotency_key=f"{uid}:1", state=JobState.RECEIVED)
    session.add_all([study, job])
    session.commit()
    return job


def test_happy_path_is_recorded_in_the_timeline(session: Session) -> None:
    job = new_job(session)
    for state in HAPPY_PATH:
        transition(session, job, state)
        session.commit()
    events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    assert [e.to_state for e in events] == [s.value for s in HAPPY_PATH]
    assert events[0].from_state == "received"
    assert all(e.job_id == job.id and e.study_id == job.study_id for e in events)
    assert job.state is JobState.VERIFIED and job.state.terminal


def test_invalid_transition_is_refused_and_nothing_recorded(session: Session) -> None:
    job = new_job(session)
    with pytest.raises(InvalidTransitionError, match="received → exported"):
        transition(session, job, JobState.EXPORTED)
    assert job.state is JobState.RECEIVED
    assert session.scalars(select(AuditEvent)).all() == []


def test_failure_keeps_the_error_and_leaving_a_leased_state_drops_the_lease(
    session: Session,
) -> None:
    job = new_job(session)
    for state in (JobState.COMPLETE, JobState.QUEUED, JobState.ANALYZING):
        transition(session, job, state)
    job.lease_owner = "worker-1"
    job.lease_expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    transition(session, job, JobState.FAILED, error="pixel data could not be decoded")
    session.commit()
    session.expire_all()
    job = session.get(Job, job.id)
    assert job is not None
    assert job.last_error == "pixel data could not be decoded"
    assert job.lease_owner is None and job.lease_expires_at is None
    transition(session, job, JobState.DEAD)
    assert job.state.terminal


def test_timestamps_come_back_as_aware_utc(session: Session) -> None:
    job = new_job(session)
    session.expire_all()
    loaded = session.get(Job, job.id)
    assert loaded is not None
    assert loaded.created_at.tzinfo is not None
    assert loaded.created_at.utcoffset() == dt.timedelta(0)


def test_idempotency_key_is_unique(session: Session) -> None:
    new_job(session, "1.2.3.5")
    study = session.scalars(select(Study)).one()
    session.add(Job(study=study, idempotency_key="1.2.3.5:1"))
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()


def test_instance_versions_unique_per_sop_instance(session: Session) -> None:
    job = new_job(session)
    common = dict(
        study_id=job.study_id,
        series_instance_uid="1.2.3.4.1",
        sop_instance_uid="1.2.3.4.1.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path="x",
        size_bytes=10,
        content_hash="blake3:" + "0" * 64,
    )
    session.add(Instance(version=1, **common))
    session.add(Instance(version=2, **common))
    session.commit()
    session.add(Instance(version=2, **common))
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()


def test_every_state_has_rules_and_terminal_states_only_go_back_to_work() -> None:
    assert set(TRANSITIONS) == set(JobState)
    for state in JobState:
        if state.terminal:
            assert TRANSITIONS[state] <= {JobState.QUEUED, JobState.BUILT}
            assert JobState.QUEUED in TRANSITIONS[state]
    assert can_transition(JobState.FAILED, JobState.DEAD)
    assert not can_transition(JobState.RECEIVED, JobState.ANALYZING)
