"""Fixtures for the admin API and page tests: a node's database with real studies.

`world` builds, with the node's own components: a SQLite database migrated by Alembic, a
spool, the ingest service, the study assembler, the job runner and the output builders.
It holds

* an analysed study (AP + lateral phantom, job ``built``): its result is the hand-made
  abnormal result of ``outputs_support`` (the one the output builder tests use, boxes of
  several classes) standing in for the models, and its SR and GSPS are built and stored by
  the real runner and builders;
* a study whose job is dead: its image vanished from the spool before analysis (a real
  failure of the runner, with ``queue.max_attempts = 1``).

The admin API and pages are served by the node's own app (`create_app`) through FastAPI's
TestClient. Settings: ``http.api_token`` set, a placeholder model bundle (verified, demo),
and two destinations: the node's own SCP (``self``) and a closed port (``down``).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from ingest_support import Stack, build_stack, phantom_bytes
from outputs_support import Variant, abnormal_result, make_study
from pipelinesupport import RadiographsOnly, bundle_fields
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from testsupport import free_port

from spinexr.node.db.models import Instance, Job, Study
from spinexr.node.db.states import JobState
from spinexr.node.db.timeline import transition
from spinexr.node.http.app import create_app
from spinexr.node.ingest.assembler import StudyAssembler, model_identity
from spinexr.node.jobs.runner import JobRunner
from spinexr.pipeline.bundle import write_bundle
from spinexr.pipeline.results import StudyResult
from spinexr.training.phantoms import write

TOKEN = "admin-token-for-tests-0123456789"


class HandMadeAnalysis(RadiographsOnly):
    """Stands in for the models: returns ``outputs_support.abnormal_result`` of the study."""

    def analyze_study(
        self, sources: Sequence[Dataset], study_instance_uid: str | None = None
    ) -> StudyResult:
        return abnormal_result(sorted(sources, key=lambda ds: str(ds.SOPInstanceUID)))


def placeholder_bundle(folder: Path, **overrides: Any) -> Path:
    """A verified bundle whose weight files are placeholders (never loaded by these tests)."""
    src = folder / "bundle-src"
    src.mkdir(parents=True)
    for name in ("densenet121.pt", "config.py", "model.pth"):
        (src / name).write_bytes(f"placeholder {name}\n".encode())
    files = {
        "classifier/densenet121.pt": src / "densenet121.pt",
        "detector/config.py": src / "config.py",
        "detector/model.pth": src / "model.pth",
    }
    fields = bundle_fields(
        name="spinexr-demo", version="1.2.0", metrics={"auroc": 0.91, "sensitivity": 0.84}
    )
    fields.update(overrides)
    return write_bundle(folder / "bundle", fields, files).directory


def ingest_datasets(stack: Stack, datasets: Sequence[Dataset], ae: str = "PACS") -> str:
    for ds in datasets:
        buf = io.BytesIO()
        write(ds, buf)
        stack.ingest.ingest([buf.getvalue()], calling_ae=ae, source="dimse")
    return str(datasets[0].StudyInstanceUID)


def queue_study(stack: Stack, uid: str) -> int:
    model = model_identity(stack.settings.models.bundle)
    job_id = StudyAssembler(stack.settings, stack.sessions, model).force_complete(uid)
    assert job_id is not None
    with stack.sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        transition(s, job, JobState.QUEUED)
        s.commit()
    return job_id


def run_claimed(stack: Stack, job_id: int) -> JobState:
    runner = JobRunner(stack.settings, stack.sessions, HandMadeAnalysis)
    assert runner.claim(job_id) == job_id
    return runner.run(job_id).state


@dataclass
class World:
    """The node's state and a client for its admin API and pages."""

    stack: Stack
    client: TestClient
    token: str
    analysed_uid: str
    analysed_job: int
    sources: list[Dataset]
    failed_uid: str
    failed_job: int

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def ingest(self, datasets: Sequence[Dataset]) -> str:
        """Receive datasets as C-STORE would; return their Study Instance UID."""
        return ingest_datasets(self.stack, datasets)

    def job(self, job_id: int) -> Job:
        with self.stack.sessions() as s:
            job = s.get(Job, job_id)
            assert job is not None
            return job

    def events(self, uid: str) -> list[Any]:
        with self.stack.sessions() as s:
            study = s.scalar(select(Study).where(Study.study_instance_uid == uid))
            assert study is not None
            return list(study.events)

    def login(self) -> None:
        r = self.client.post("/admin/login", data={"token": self.token, "next": "/admin/"})
        assert r.status_code == 200, r.text

    def csrf(self, path: str) -> str:
        r = self.client.get(path)
        assert r.status_code == 200, r.text
        found = re.search(r'name="csrf" value="([A-Za-z0-9_-]+)"', r.text)
        assert found, "no CSRF token on the page"
        return found.group(1)


def build_world(tmp_path: Path, **sections: Any) -> World:
    scp_port = free_port()
    sections.setdefault("http", {"api_token": TOKEN})
    sections.setdefault("queue", {"max_attempts": 1})
    sections.setdefault("models", {"bundle": str(placeholder_bundle(tmp_path))})
    sections.setdefault("dicom", {"port": scp_port})
    sections.setdefault(
        "destinations",
        [
            {"name": "self", "ae_title": "SPINEXR", "host": "127.0.0.1", "port": scp_port},
            {"name": "down", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port()},
        ],
    )
    stack = build_stack(tmp_path, **sections)
    sources = make_study(11, Variant())
    analysed_uid = ingest_datasets(stack, sources)
    analysed_job = queue_study(stack, analysed_uid)
    assert run_claimed(stack, analysed_job) is JobState.BUILT

    failed_uid = generate_uid()
    data, _ = phantom_bytes(5, study_uid=failed_uid)
    stack.ingest.ingest([data], calling_ae="PACS", source="dimse")
    failed_job = queue_study(stack, failed_uid)
    with stack.sessions() as s:
        for path in s.scalars(
            select(Instance.path).join(Study).where(Study.study_instance_uid == failed_uid)
        ):
            (stack.settings.storage.spool_dir / path).unlink()
    assert run_claimed(stack, failed_job) is JobState.DEAD

    client = TestClient(create_app(stack.settings, stack.ingest))
    return World(stack, client, TOKEN, analysed_uid, analysed_job, sources, failed_uid, failed_job)


@pytest.fixture
def make_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., World]]:
    """Build a world with other settings sections (``build_world``'s keywords)."""
    monkeypatch.chdir(tmp_path)
    made: list[World] = []

    def make(**sections: Any) -> World:
        w = build_world(tmp_path / f"world{len(made)}", **sections)
        w.client.__enter__()
        made.append(w)
        return w

    yield make
    for w in made:
        w.client.__exit__(None, None, None)


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    """The default world (see the module docstring)."""
    return make_world()
