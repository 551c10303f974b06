"""Issue 14 item 1: a job never ends without the radiologist being told.

The last failed attempt builds the explicit "analysis failed" SR, which is exported like any
other result; only when not even that can be built does the job go ``dead``.
"""

from __future__ import annotations

import pydicom
from ingest_support import Stack, phantom_bytes
from outputs_support import dciodvfy_errors
from pydicom.uid import generate_uid
from sqlalchemy import select

from spinexr.node.db.models import Job, OutputObject
from spinexr.node.db.states import JobState, OutputKind
from spinexr.node.db.timeline import transition
from spinexr.node.ingest.assembler import StudyAssembler
from spinexr.node.jobs.runner import JobRunner
from spinexr.node.outputs.readback import read_report
from spinexr.pipeline.results import Outcome


def queued_job(stack: Stack) -> int:
    uid = generate_uid()
    data, _ = phantom_bytes(1, study_uid=uid)
    stack.ingest.ingest([data], calling_ae="PACS", source="dimse")
    job_id = StudyAssembler(stack.settings, stack.sessions, "m@1").force_complete(uid)
    assert job_id is not None
    with stack.sessions() as s:
        transition(s, s.get(Job, job_id), JobState.QUEUED)
        s.commit()
    return job_id


def state(stack: Stack, job_id: int) -> Job:
    with stack.sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def unloadable_bundle():
    raise RuntimeError("model bundle folder is missing")


def outputs(stack: Stack, job_id: int) -> list[OutputObject]:
    with stack.sessions() as s:
        return list(s.scalars(select(OutputObject).where(OutputObject.job_id == job_id)))


def check_failure_sr(stack: Stack, job_id: int, words: str) -> None:
    rows = outputs(stack, job_id)
    assert [r.kind for r in rows] == [OutputKind.SR]
    path = stack.settings.storage.output_dir / rows[0].path
    sr = pydicom.dcmread(path)
    report = read_report(sr)
    assert report.outcome is Outcome.FAILED
    assert words in report.summary
    assert report.failures, "each image says it could not be analysed"
    errors, _ = dciodvfy_errors(path)
    assert errors == []


def test_the_last_failed_attempt_sends_the_analysis_failed_report(stack: Stack) -> None:
    job_id = queued_job(stack)
    runner = JobRunner(stack.settings, stack.sessions, unloadable_bundle)
    states = []
    for _ in range(stack.settings.queue.max_attempts):
        assert runner.claim() == job_id
        states.append(runner.run(job_id).state)
    assert states[:-1] == [JobState.QUEUED] * (len(states) - 1)
    assert states[-1] is JobState.BUILT, "the job goes on to export its failure report"
    job = state(stack, job_id)
    assert job.state is JobState.BUILT
    check_failure_sr(stack, job_id, "analysis failed after 5 attempts")


def test_a_job_whose_workers_keep_dying_is_reported_not_retried_forever(stack: Stack) -> None:
    job_id = queued_job(stack)
    with stack.sessions() as s:
        job = s.get(Job, job_id)
        job.attempts = job.max_attempts  # each earlier attempt's worker was killed
        s.commit()
    runner = JobRunner(stack.settings, stack.sessions, unloadable_bundle)
    assert runner.claim() == job_id
    assert runner.run(job_id).state is JobState.BUILT
    check_failure_sr(stack, job_id, "WorkerLostError")
