"""The study page and API show one current result; earlier ones are marked superseded."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from outputs_support import abnormal_result
from pipelinesupport import RadiographsOnly
from pydicom.dataset import Dataset

from spinexr.node.db.models import Job
from spinexr.node.db.states import JobState
from spinexr.node.db.timeline import transition
from spinexr.node.ingest.assembler import StudyAssembler, model_identity
from spinexr.node.jobs.runner import JobRunner
from spinexr.pipeline.results import StudyResult


class Analysis(RadiographsOnly):
    def analyze_study(
        self, sources: Sequence[Dataset], study_instance_uid: str | None = None
    ) -> StudyResult:
        return abnormal_result(sorted(sources, key=lambda ds: str(ds.SOPInstanceUID)))


def reanalyse(world) -> int:
    """A corrected version of the first image arrives; the study completes again."""
    changed = copy.deepcopy(world.sources[0])
    changed.ImageComments = "corrected"
    world.ingest([changed])
    settings, sessions = world.stack.settings, world.stack.sessions
    assembler = StudyAssembler(settings, sessions, model_identity(settings.models.bundle))
    job_id = assembler.force_complete(world.analysed_uid)
    assert job_id is not None
    return job_id


def run(world, job_id: int) -> None:
    with world.stack.sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        transition(s, job, JobState.QUEUED)
        s.commit()
    runner = JobRunner(world.stack.settings, world.stack.sessions, Analysis)
    assert runner.claim(job_id) == job_id
    assert runner.run(job_id).state is JobState.BUILT


def test_study_api_has_one_current_result_and_marks_the_superseded_job(world) -> None:
    old = world.analysed_job
    new = reanalyse(world)
    url = f"/api/v1/studies/{world.analysed_uid}"
    body = world.client.get(url, headers=world.auth).json()
    assert body["current_job_id"] == new
    assert body["result"] is None  # the re-analysis has not run yet: no stale result
    first, second = body["jobs"]
    assert (first["id"], first["state"], first["superseded_by"], first["current"]) == (
        old,
        "cancelled",
        new,
        False,
    )
    assert first["result"]["outcome"] == "ABNORMAL"  # kept in its (superseded) row
    assert (second["id"], second["current"], second["superseded_by"]) == (new, True, None)

    run(world, new)
    body = world.client.get(url, headers=world.auth).json()
    assert body["current_job_id"] == new
    assert body["result"] is not None and body["result"] == body["jobs"][1]["result"]


def test_study_page_shows_the_current_result_and_collapses_the_superseded_one(world) -> None:
    new = reanalyse(world)
    world.login()
    page = world.client.get(f"/admin/studies/{world.analysed_uid}").text
    assert f'Current: <a href="#job-{new}">job {new}</a> (complete)' in page
    assert "No result yet." in page
    assert "<summary>1 superseded result(s)</summary>" in page
    assert f"superseded by {new}" in page

    run(world, new)
    page = world.client.get(f"/admin/studies/{world.analysed_uid}").text
    assert f'Current: <a href="#job-{new}">job {new}</a> (built)' in page
    assert page.count('<strong class="outcome') == 1  # one current result shown
    assert "<summary>1 superseded result(s)</summary>" in page
    assert f'<tr id="job-{world.analysed_job}" class="superseded">' in page
