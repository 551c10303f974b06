"""A re-analysed study's older jobs are cancelled, not retried, and their results discarded.

Issue 14 item 8: a late image or a new version of an instance re-completes a study; the new
job must cancel the older ones that have not finished (timeline "superseded by job N"), a
worker still analysing one must discard its result, and nothing of it may be retried.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
from collections.abc import Callable, Sequence

import pytest
from ingest_support import Stack, build_stack
from outputs_support import Variant, abnormal_result, image_result, make_study
from pipelinesupport import RadiographsOnly
from pydicom.dataset import Dataset
from sqlalchemy import select

from spinexr.node.db.models import AuditEvent, Job, OutputObject, Result, utcnow
from spinexr.node.db.states import JobState
from spinexr.node.db.timeline import transition
from spinexr.node.export.exporter import Exporter
from spinexr.node.ingest.assembler import StudyAssembler
from spinexr.node.jobs.reconciler import Reconciler
from spinexr.node.jobs.runner import JobRunner
from spinexr.pipeline.results import StudyResult
from spinexr.training.phantoms import make_phantom_image, write

SEED = 41


@pytest.fixture
def stack(tmp_path, monkeypatch) -> Stack:
    monkeypatch.chdir(tmp_path)
    return build_stack(tmp_path, queue={"max_attempts": 3})


def ingest(stack: Stack, datasets: Sequence[Dataset]) -> str:
    for ds in datasets:
        buf = io.BytesIO()
        write(ds, buf)
        stack.ingest.ingest([buf.getvalue()], calling_ae="PACS", source="dimse")
    return str(datasets[0].StudyInstanceUID)


def late_image(seed: int = SEED) -> Dataset:
    """A third image of `make_study(seed)`'s study, arriving after it was complete."""
    ds, _ = make_phantom_image(
        seed,
        view="AP",
        size="small",
        region="LSPINE",
        study_uid=f"1.2.826.0.1.3680043.8.498.{seed}.1",
        series_uid=f"1.2.826.0.1.3680043.8.498.{seed}.2",
        sop_instance_uid=f"1.2.826.0.1.3680043.8.498.{seed}.3.3",
        instance_number=3,
    )
    return ds


def new_version(ds: Dataset) -> Dataset:
    """The same SOP instance with other bytes (a corrected header)."""
    changed = copy.deepcopy(ds)
    changed.ImageComments = "corrected"
    return changed


def result_for(sources: Sequence[Dataset]) -> StudyResult:
    """A hand-made result standing in for the models (every source analysed)."""
    ordered = sorted(sources, key=lambda d: str(d.SOPInstanceUID))
    base = abnormal_result(ordered[:2])
    extra = [image_result(ds, 0.2, base.threshold) for ds in ordered[2:]]
    return base.model_copy(update={"images": [*base.images, *extra]})


class Pipeline(RadiographsOnly):
    """Analyses with `result_for`; ``during`` runs while the job is being analysed."""

    def __init__(self, during: Callable[[], None] | None = None, fail: bool = False) -> None:
        self.during, self.fail = during, fail

    def analyze_study(
        self, sources: Sequence[Dataset], study_instance_uid: str | None = None
    ) -> StudyResult:
        if self.during is not None:
            self.during()
        if self.fail:
            raise RuntimeError("model failure")
        return result_for(sources)


def runner(stack: Stack, pipeline: Pipeline) -> JobRunner:
    return JobRunner(stack.settings, stack.sessions, lambda: pipeline)


def queue(stack: Stack, job_id: int) -> None:
    with stack.sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        transition(s, job, JobState.QUEUED)
        s.commit()


def queued_study(stack: Stack) -> tuple[list[Dataset], str, StudyAssembler, int]:
    """Ingest the test study, complete it and queue its job: sources, UID, assembler, job id."""
    sources = make_study(SEED, Variant())
    uid = ingest(stack, sources)
    assembler = StudyAssembler(stack.settings, stack.sessions, "m@1")
    first = assembler.force_complete(uid)
    assert first is not None
    queue(stack, first)
    return sources, uid, assembler, first


def job(stack: Stack, job_id: int) -> Job:
    with stack.sessions() as s:
        found = s.get(Job, job_id)
        assert found is not None
        return found


def cancellations(stack: Stack) -> list[tuple[int | None, str | None]]:
    with stack.sessions() as s:
        return [
            (e.job_id, e.detail)
            for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))
            if e.to_state == JobState.CANCELLED.value
        ]


def test_a_late_image_cancels_the_failing_job_instead_of_retrying_it_to_dead(
    stack: Stack,
) -> None:
    _, uid, assembler, first = queued_study(stack)
    broken = runner(stack, Pipeline(fail=True))
    assert broken.claim(first) == first
    outcome = broken.run(first)
    assert outcome.state is JobState.QUEUED and outcome.retry_in  # waiting for its retry

    ingest(stack, [late_image()])
    second = assembler.force_complete(uid)
    assert second is not None and job(stack, second).superseded_job_id == first
    assert job(stack, first).state is JobState.CANCELLED
    assert cancellations(stack) == [(first, f"superseded by job {second}")]

    # The old job's retry message and the reconciler find nothing of it to run again.
    rec = Reconciler(stack.settings, stack.sessions, lambda j, p: None, lambda j: None)
    later = utcnow() + dt.timedelta(seconds=stack.settings.queue.lease_seconds + 1)
    rec.reconcile(now=later)
    claimed = []
    for _ in range(stack.settings.queue.max_attempts + 1):
        got = broken.claim(preferred=first)
        if got is None:
            break
        claimed.append(got)
        broken.run(got)
    assert claimed and set(claimed) == {second}  # only the new job is retried
    assert job(stack, first).state is JobState.CANCELLED  # not dead
    assert job(stack, first).attempts == 1


def test_a_job_superseded_while_analysed_records_and_exports_nothing(stack: Stack) -> None:
    sources, uid, assembler, first = queued_study(stack)
    created: list[int | None] = []

    def corrected_image_arrives() -> None:
        ingest(stack, [new_version(sources[0])])
        created.append(assembler.force_complete(uid))

    worker = runner(stack, Pipeline(during=corrected_image_arrives))
    assert worker.claim(first) == first
    outcome = worker.run(first)
    (second,) = created
    assert second is not None
    assert outcome.state is JobState.CANCELLED
    assert job(stack, first).state is JobState.CANCELLED
    with stack.sessions() as s:
        assert s.scalar(select(Result).where(Result.job_id == first)) is None
        assert s.scalars(select(OutputObject).where(OutputObject.job_id == first)).all() == []
    assert list(stack.settings.storage.output_dir.glob("**/*.dcm")) == []
    # An export message for it (e.g. a duplicate) sends nothing.
    assert Exporter(stack.settings, stack.sessions).export(first).stopped
    assert cancellations(stack) == [(first, f"superseded by job {second}")]

    # The new job analyses the corrected image; its SR has no predecessor (none got out).
    queue(stack, second)
    fresh = runner(stack, Pipeline())
    assert fresh.claim() == second
    assert fresh.run(second).state is JobState.BUILT


def test_a_superseded_job_whose_analysis_then_fails_is_not_retried(stack: Stack) -> None:
    _, uid, assembler, first = queued_study(stack)

    def late_image_arrives() -> None:
        ingest(stack, [late_image()])
        assembler.force_complete(uid)

    worker = runner(stack, Pipeline(during=late_image_arrives, fail=True))
    assert worker.claim(first) == first
    outcome = worker.run(first)
    assert outcome.state is JobState.CANCELLED and outcome.retry_in is None
    assert job(stack, first).state is JobState.CANCELLED
    assert job(stack, first).last_error is None


def test_a_job_cancelled_between_claim_and_run_is_not_analysed(stack: Stack) -> None:
    _, uid, assembler, first = queued_study(stack)
    worker = runner(stack, Pipeline(fail=True))
    assert worker.claim(first) == first
    ingest(stack, [late_image()])
    assert assembler.force_complete(uid) is not None
    assert worker.run(first).state is JobState.CANCELLED
    assert job(stack, first).state is JobState.CANCELLED and job(stack, first).attempts == 1
