from __future__ import annotations

import datetime as dt

import pytest
from ingest_support import Stack, build_stack, phantom_bytes
from pydicom.uid import generate_uid
from sqlalchemy import select

from spinexr.node.db.models import AuditEvent, Job, Study, utcnow
from spinexr.node.db.states import JobState, StudyStatus
from spinexr.node.errors import SpinexrError
from spinexr.node.ingest.assembler import StudyAssembler, idempotency_key


def send_study(stack: Stack, study_uid: str, seeds=(1, 2), ae: str = "PACS") -> None:
    for seed in seeds:
        data, _ = phantom_bytes(seed, study_uid=study_uid, view="AP" if seed % 2 else "LAT")
        stack.ingest.ingest([data], calling_ae=ae, source="dimse")


def later(seconds: float) -> dt.datetime:
    return utcnow() + dt.timedelta(seconds=seconds)


def jobs(stack: Stack) -> list[Job]:
    with stack.sessions() as s:
        return list(s.scalars(select(Job).order_by(Job.id)).all())


@pytest.fixture
def assembler(stack: Stack) -> StudyAssembler:
    published: list[int] = []
    a = StudyAssembler(stack.settings, stack.sessions, "demo@1", publish=published.append)
    a.published = published  # type: ignore[attr-defined]
    return a


def test_study_completes_after_the_quiet_period_with_exactly_one_job(
    stack: Stack, assembler: StudyAssembler
) -> None:
    uid = generate_uid()
    send_study(stack, uid)
    t = stack.settings.study.completion_seconds
    assert assembler.complete_due(later(t / 2)) == []  # still receiving
    created = assembler.complete_due(later(t + 1))
    assert len(created) == 1 and assembler.published == created
    assert assembler.complete_due(later(t + 5)) == []
    (job,) = jobs(stack)
    assert job.state is JobState.COMPLETE and job.bundle_version == "demo@1"
    with stack.sessions() as s:
        study = s.scalars(select(Study)).one()
        assert study.status is StudyStatus.COMPLETE and study.completed_at is not None
        moves = [(e.from_state, e.to_state) for e in s.scalars(select(AuditEvent)) if e.to_state]
    assert moves == [(None, "received"), ("received", "complete")]


def test_sending_the_same_study_again_creates_no_job(
    stack: Stack, assembler: StudyAssembler
) -> None:
    uid = generate_uid()
    send_study(stack, uid)
    t = stack.settings.study.completion_seconds
    assembler.complete_due(later(t + 1))
    send_study(stack, uid)  # identical bytes: duplicates, study stays complete
    assert assembler.complete_due(later(2 * t + 2)) == []
    assert len(jobs(stack)) == 1


def test_new_instance_after_analysis_triggers_a_superseding_rerun(
    stack: Stack, assembler: StudyAssembler
) -> None:
    uid = generate_uid()
    send_study(stack, uid)
    t = stack.settings.study.completion_seconds
    (first,) = assembler.complete_due(later(t + 1))
    send_study(stack, uid, seeds=(3,))
    with stack.sessions() as s:
        assert s.scalars(select(Study)).one().status is StudyStatus.RECEIVING
    (second,) = assembler.complete_due(later(2 * t + 2))
    j1, j2 = jobs(stack)
    assert (j1.id, j2.id) == (first, second)
    assert j2.superseded_job_id == j1.id
    assert j1.idempotency_key != j2.idempotency_key


def test_study_with_nothing_to_analyse_completes_without_a_job(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    st = build_stack(tmp_path, study={"accepted_modalities": ["CR"]})
    uid = generate_uid()
    data, _ = phantom_bytes(1, study_uid=uid, sop_class="DX")
    st.ingest.ingest([data], calling_ae="PACS", source="dimse")
    a = StudyAssembler(st.settings, st.sessions, "demo@1")
    assert a.complete_due(later(st.settings.study.completion_seconds + 1)) == []
    with st.sessions() as s:
        study = s.scalars(select(Study)).one()
        assert study.status is StudyStatus.COMPLETE
        assert study.decision == "not for analysis: modality DX"
        assert "none for analysis" in s.scalars(select(AuditEvent)).all()[-1].detail


def test_admin_can_force_completion(stack: Stack, assembler: StudyAssembler) -> None:
    uid = generate_uid()
    send_study(stack, uid)
    job = assembler.force_complete(uid)
    assert job is not None and jobs(stack)[0].id == job
    assert assembler.force_complete(uid) is None
    with pytest.raises(SpinexrError, match="no study"):
        assembler.force_complete("1.2.3.999")


def test_other_model_version_is_another_job() -> None:
    inst = [("1.2.3.1", "a" * 64), ("1.2.3.2", "b" * 64)]
    k1 = idempotency_key("1.2.3", inst, "m@1")
    assert k1 == idempotency_key("1.2.3", list(reversed(inst)), "m@1")
    assert k1 != idempotency_key("1.2.3", inst, "m@2")
    assert k1 != idempotency_key("1.2.3", inst[:1], "m@1")
