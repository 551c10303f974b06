"""Shared by the export tests: a study's built job, destination entries, what was recorded."""

from __future__ import annotations

from pathlib import Path

from ingest_support import Stack, build_stack
from outputs_support import Variant, abnormal_result, make_study
from sqlalchemy import select

from spinexr.node.db.models import ExportAttempt, Job, Study
from spinexr.node.db.states import JobState
from spinexr.node.outputs.build import build_outputs
from spinexr.node.outputs.persist import save_outputs


def built_job(
    tmp_path: Path, monkeypatch, destinations: list[dict], max_attempts: int = 3, **sections
) -> tuple[Stack, int, list]:
    """A job in state ``built`` with its SR and GSPS saved, for ``destinations``."""
    monkeypatch.chdir(tmp_path)
    stack = build_stack(
        tmp_path,
        destinations=destinations,
        queue={"max_attempts": max_attempts},
        **sections,
        output={"sr": True, "gsps": True, "kos": False},
    )
    sources = make_study(7, Variant())
    result = abnormal_result(sources)
    with stack.sessions() as s:
        study = Study(study_instance_uid=result.study_instance_uid)
        job = Job(study=study, idempotency_key="k1", state=JobState.BUILT)
        s.add_all([study, job])
        s.flush()
        built = build_outputs(sources, result, stack.settings, job_key="k1")
        save_outputs(s, job, built, stack.settings.storage.output_dir)
        s.commit()
        job_id = job.id
    return stack, job_id, built


def dimse(port: int, aet: str = "PACS", **kw) -> dict:
    return {
        "name": "pacs",
        "kind": "dimse",
        "ae_title": aet,
        "host": "127.0.0.1",
        "port": port,
        **kw,
    }


def attempts(stack: Stack) -> list[ExportAttempt]:
    with stack.sessions() as s:
        return list(s.scalars(select(ExportAttempt).order_by(ExportAttempt.id)))


def job_state(stack: Stack, job_id: int) -> Job:
    with stack.sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job
