"""/metrics in Prometheus text format, computed from the database the real services wrote."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from ingest_support import Stack, build_stack, phantom_bytes
from outputs_support import Variant, abnormal_result, make_study, normal_result
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid
from testsupport import free_port

from spinexr.node.db.models import Job, Result, Study
from spinexr.node.db.states import JobState
from spinexr.node.db.timeline import transition
from spinexr.node.dimse.scp import StoreSCP
from spinexr.node.export.exporter import Exporter
from spinexr.node.http.app import create_app
from spinexr.node.ingest.assembler import StudyAssembler
from spinexr.node.jobs.runner import JobRunner
from spinexr.node.outputs.build import build_outputs
from spinexr.node.outputs.persist import save_outputs
from spinexr.node.tasking.app import configure
from spinexr.node.tasking.dispatch import queue_job
from spinexr.pipeline.results import StudyResult
from spinexr.training.phantoms import write

TIMINGS = {
    "preprocess": 0.03,
    "classifier.densenet121": 1.7,
    "detector": 6.9,
    "fusion": 0.01,
    "total": 8.64,
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def node_only(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k[0].startswith("spinexr_")}


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics[(name, tuple(sorted(labels.items())))]


def scrape(stack: Stack) -> dict:
    app = create_app(stack.settings)
    try:
        with TestClient(app) as client:
            response = client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=")
        return samples(response.text)
    finally:
        app.state.operations.close()


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Stack]:
    peer = build_stack(tmp_path / "pacs", dicom={"ae_title": "PACS"})
    peer.scp = StoreSCP(peer.settings)
    peer.scp.start()
    yield peer
    peer.scp.stop()


def ingest(stack: Stack, ds, source: str) -> None:
    buf = io.BytesIO()
    write(ds, buf)
    ae = "STOW-RS" if source == "stowrs" else "MODALITY"
    stack.ingest.ingest([buf.getvalue()], calling_ae=ae, source=source)


def store_result(stack: Stack, job_id: int, sources, result: StudyResult) -> None:
    """What the job runner records after an analysis: result row, outputs, ``built``."""
    with stack.sessions() as s:
        job = s.get(Job, job_id)
        s.add(
            Result(
                job_id=job_id,
                outcome=result.outcome.value,
                probability=result.probability,
                threshold=result.threshold,
                abnormal=result.decision,
                bundle_name=result.provenance.bundle_name,
                bundle_version=result.provenance.bundle_version,
                device_uid=result.provenance.device_uid,
                payload=result.model_dump(mode="json"),
            )
        )
        built = build_outputs(sources, result, stack.settings, job_key=job.idempotency_key)
        save_outputs(s, job, built, stack.settings.storage.output_dir)
        transition(s, job, JobState.BUILT, detail="test")
        s.commit()


def test_counters_match_what_went_through_the_node(
    tmp_path: Path, monkeypatch, pacs: Stack
) -> None:
    monkeypatch.chdir(tmp_path)
    destinations = [
        {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port},
        {"name": "down", "ae_title": "GONE", "host": "127.0.0.1", "port": free_port()},
    ]
    stack = build_stack(tmp_path, destinations=destinations)
    configure(stack.settings)
    sources = make_study(7, Variant())
    for ds in sources:  # two images over DIMSE, one study over STOW-RS
        ingest(stack, ds, "dimse")
    ingest(stack, phantom_bytes(3, study_uid=generate_uid())[1], "stowrs")

    uid = str(sources[0].StudyInstanceUID)
    job_id = StudyAssembler(stack.settings, stack.sessions, "m@1").force_complete(uid)
    assert job_id is not None
    assert queue_job(stack.sessions, job_id)  # published to the embedded broker

    before = scrape(stack)
    assert value(before, "spinexr_queue_messages", queue="inference") == 1
    assert value(before, "spinexr_jobs", state="queued") == 1

    assert JobRunner(stack.settings, stack.sessions, lambda: None).claim() == job_id
    result = abnormal_result(sources).model_copy(update={"timings": TIMINGS})
    store_result(stack, job_id, sources, result)
    round_ = Exporter(stack.settings, stack.sessions).export(job_id)
    assert round_.state is JobState.FAILED  # "down" refused everything, "pacs" took it all
    objects = 1 + len(sources)  # an SR and a GSPS per image

    m = scrape(stack)
    assert value(m, "spinexr_database_up") == 1
    assert value(m, "spinexr_instances_received_total", source="dimse") == 2
    assert value(m, "spinexr_instances_received_total", source="stowrs") == 1
    assert value(m, "spinexr_instances_received_bytes_total", source="dimse") > 0
    assert value(m, "spinexr_studies_received_total") == 2
    assert value(m, "spinexr_studies_completed_total", outcome="abnormal") == 1
    assert value(m, "spinexr_jobs", state="failed") == 1
    assert value(m, "spinexr_jobs", state="queued") == 0
    assert value(m, "spinexr_jobs", state="verified") == 0

    assert (
        value(m, "spinexr_export_attempts_total", destination="pacs", status="success") == objects
    )
    assert value(m, "spinexr_export_attempts_total", destination="down", status="failed") == (
        objects
    )
    assert value(m, "spinexr_export_failures_total", destination="down") == objects
    assert value(m, "spinexr_export_failures_total", destination="pacs") == 0
    for dest in ("pacs", "down"):
        assert value(m, "spinexr_export_duration_seconds_count", destination=dest) == 1
        assert value(m, "spinexr_export_duration_seconds_sum", destination=dest) >= 0

    # The study probability 0.91 lands between the 0.9 and 0.95 bounds.
    assert value(m, "spinexr_study_abnormality_probability_count") == 1
    assert value(m, "spinexr_study_abnormality_probability_sum") == pytest.approx(0.91)
    assert value(m, "spinexr_study_abnormality_probability_bucket", le="0.9") == 0
    assert value(m, "spinexr_study_abnormality_probability_bucket", le="0.95") == 1
    # Image probabilities 0.91 and 0.40.
    assert value(m, "spinexr_image_abnormality_probability_count") == 2
    assert value(m, "spinexr_image_abnormality_probability_bucket", le="0.4") == 1
    assert value(m, "spinexr_image_abnormality_probability_bucket", le="+Inf") == 2
    for stage, seconds in TIMINGS.items():
        assert value(m, "spinexr_stage_duration_seconds_count", stage=stage) == 1
        assert value(m, "spinexr_stage_duration_seconds_sum", stage=stage) == pytest.approx(seconds)
    assert value(m, "spinexr_stage_duration_seconds_bucket", stage="detector", le="5.0") == 0
    assert value(m, "spinexr_stage_duration_seconds_bucket", stage="detector", le="10.0") == 1

    assert value(m, "spinexr_broker_up") == 1
    assert value(m, "spinexr_queue_messages", queue="export") == 0
    assert value(m, "process_cpu_seconds_total") > 0
    assert any(name == "spinexr_build_info" and dict(labels).get("version") for name, labels in m)


def test_results_are_observed_once_each_across_scrapes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    stack = build_stack(tmp_path)
    app = create_app(stack.settings)
    sources = make_study(8, Variant())

    def add(n: int, result: StudyResult) -> None:
        with stack.sessions() as s:
            study = Study(study_instance_uid=f"1.2.3.{n}")
            job = Job(study=study, idempotency_key=f"k{n}", state=JobState.BUILT)
            s.add_all([study, job])
            s.flush()
            s.add(
                Result(
                    job_id=job.id,
                    outcome=result.outcome.value,
                    probability=result.probability,
                    payload=result.model_dump(mode="json"),
                )
            )
            s.commit()

    def get() -> dict:
        with TestClient(app) as client:
            return samples(client.get("/metrics").text)

    try:
        add(1, normal_result(sources).model_copy(update={"timings": TIMINGS}))
        first = get()
        assert value(first, "spinexr_stage_duration_seconds_count", stage="total") == 1
        assert value(first, "spinexr_image_abnormality_probability_count") == 2
        assert node_only(get()) == node_only(first)  # the same result is not observed again
        add(2, abnormal_result(sources).model_copy(update={"timings": TIMINGS}))
        second = get()
        assert value(second, "spinexr_stage_duration_seconds_count", stage="total") == 2
        assert value(second, "spinexr_image_abnormality_probability_count") == 4
        assert value(second, "spinexr_studies_completed_total", outcome="no_finding") == 1
        assert value(second, "spinexr_studies_completed_total", outcome="abnormal") == 1
    finally:
        app.state.operations.close()


def test_each_app_has_its_own_registry_and_survives_a_database_outage(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    good = build_stack(tmp_path / "good")
    bad = build_stack(tmp_path / "bad")
    bad.settings.database.url = f"postgresql://nobody@127.0.0.1:{free_port()}/none"  # type: ignore[assignment]
    apps = [create_app(good.settings), create_app(good.settings), create_app(bad.settings)]
    try:
        assert len({id(a.state.operations.registry) for a in apps}) == 3
        results = []
        for app in apps:
            with TestClient(app) as client:
                openmetrics = client.get(
                    "/metrics", headers={"Accept": "application/openmetrics-text"}
                )
                assert openmetrics.headers["content-type"].startswith("application/openmetrics")
                assert openmetrics.text.endswith("# EOF\n")
                response = client.get("/metrics")
            assert response.status_code == 200
            results.append(samples(response.text))
        assert value(results[0], "spinexr_database_up") == 1
        assert value(results[1], "spinexr_database_up") == 1
        assert value(results[2], "spinexr_database_up") == 0
        assert not any(name.startswith("spinexr_jobs") for name, _ in results[2])
    finally:
        for app in apps:
            app.state.operations.close()
