"""Admin HTTP API (/api/v1) against a real SQLite database built by the node's components."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from ingest_support import build_stack, phantom_bytes
from pydicom.uid import generate_uid
from testsupport import free_port, make_orthanc

from spinexr.node.db.states import JobState
from spinexr.node.dimse.scp import StoreSCP
from spinexr.node.export.exporter import Exporter
from spinexr.node.http.admin.dashboard import DEMO_WARNING
from spinexr.node.http.app import create_app

# ----------------------------------------------------------------------------- auth


def test_admin_api_is_refused_while_no_token_is_set(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    stack = build_stack(tmp_path)
    assert not stack.settings.http.api_token.get_secret_value()
    with TestClient(create_app(stack.settings, stack.ingest)) as client:
        for path in ("/api/v1/studies", "/api/v1/settings", "/api/v1/bundle"):
            r = client.get(path, headers={"Authorization": "Bearer "})
            assert r.status_code == 503
            assert r.json()["detail"] == "admin API disabled: set http.api_token"
        assert client.post("/api/v1/jobs/1/retry").status_code == 503
        assert client.get("/healthz").status_code == 200


def test_missing_or_wrong_bearer_token_is_401(world) -> None:
    c = world.client
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {world.token}"},
        {"Authorization": f"Bearer {world.token}x"},
        {"Authorization": "Bearer ünïcode".encode()},
    ):
        r = c.get("/api/v1/studies", headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["detail"] == "missing or wrong bearer token"
    # A page session cookie is no API credential.
    world.login()
    assert c.get("/api/v1/studies").status_code == 401
    assert c.get("/api/v1/studies", headers=world.auth).status_code == 200


# ----------------------------------------------------------------------------- studies


def test_study_search_filters_and_pages(world) -> None:
    c, auth = world.client, world.auth
    body = c.get("/api/v1/studies", headers=auth).json()
    assert body["total"] == 2 and body["page"] == 1
    # Newest first: the failed study was received last.
    assert [r["study_instance_uid"] for r in body["items"]] == [
        world.failed_uid,
        world.analysed_uid,
    ]
    analysed = body["items"][1]
    assert analysed["instances"] == 2 and analysed["job_state"] == "built"
    assert analysed["accession_number"] == str(world.sources[0].AccessionNumber)

    def uids(**params: object) -> list[str]:
        r = c.get("/api/v1/studies", headers=auth, params=params)
        assert r.status_code == 200, r.text
        return [row["study_instance_uid"] for row in r.json()["items"]]

    assert uids(accession=str(world.sources[0].AccessionNumber)) == [world.analysed_uid]
    assert uids(accession="NO-SUCH") == []
    assert uids(study_uid=world.analysed_uid[:-2]) == [world.analysed_uid]  # prefix
    assert uids(study_uid="1.2%") == []  # LIKE wildcards are literal
    assert uids(job_state="dead") == [world.failed_uid]
    assert uids(job_state="built", status="complete") == [world.analysed_uid]
    assert uids(status="receiving") == []
    page2 = c.get("/api/v1/studies", headers=auth, params={"per_page": 1, "page": 2}).json()
    assert page2["total"] == 2 and [r["study_instance_uid"] for r in page2["items"]] == [
        world.analysed_uid
    ]
    r = c.get("/api/v1/studies", headers=auth, params={"job_state": "finished"})
    assert r.status_code == 422
    assert "queued" in str(r.json()["detail"])  # the allowed values are named
    assert c.get("/api/v1/studies", headers=auth, params={"per_page": 0}).status_code == 422


def test_study_detail_has_instances_jobs_results_outputs_and_timeline(world) -> None:
    r = world.client.get(f"/api/v1/studies/{world.analysed_uid}", headers=world.auth)
    assert r.status_code == 200, r.text
    s = r.json()
    sops = sorted(str(ds.SOPInstanceUID) for ds in world.sources)
    assert sorted(i["sop_instance_uid"] for i in s["instances"]) == sops
    assert s["status"] == "complete" and s["decision"] == "analyse"
    (job,) = s["jobs"]
    assert job["id"] == world.analysed_job and job["state"] == "built"
    result = s["result"]
    assert result == job["result"]
    assert result["outcome"] == "ABNORMAL" and result["demo"] is True
    assert set(result["flagged_classes"]) == {
        "Osteophytes",
        "Surgical implant",
        "Disc space narrowing",
    }
    # outputs_support.ABNORMAL_BOXES: 2 displayed boxes on the AP (one hidden), 1 on the LAT.
    assert result["boxes_displayed"] == 3
    assert [len(i["boxes"]) for i in result["images"]] == [2, 1]
    kinds = sorted(o["kind"] for o in job["outputs"])
    assert kinds == ["gsps", "gsps", "sr"]
    gsps_sources = sorted(
        o["source_sop_instance_uid"] for o in job["outputs"] if o["kind"] == "gsps"
    )
    assert gsps_sources == sops
    assert job["exports"] == []
    moves = [(e["from_state"], e["to_state"]) for e in s["timeline"] if e["to_state"]]
    assert moves == [
        (None, "received"),
        ("received", "complete"),
        ("complete", "queued"),
        ("queued", "analyzing"),
        ("analyzing", "built"),
    ]
    missing = world.client.get("/api/v1/studies/1.2.3.999", headers=world.auth)
    assert missing.status_code == 404 and missing.json()["detail"] == "no study 1.2.3.999"


# ----------------------------------------------------------------------------- jobs


def test_jobs_list_and_detail(world) -> None:
    c, auth = world.client, world.auth
    dead = c.get("/api/v1/jobs", headers=auth, params={"state": "dead"}).json()
    assert [j["id"] for j in dead] == [world.failed_job]
    assert "is missing from the spool" in dead[0]["last_error"]
    assert len(c.get("/api/v1/jobs", headers=auth, params={"limit": 1}).json()) == 1
    detail = c.get(f"/api/v1/jobs/{world.analysed_job}", headers=auth).json()
    assert detail["state"] == "built" and detail["result"]["outcome"] == "ABNORMAL"
    assert len(detail["outputs"]) == 3
    r = c.get("/api/v1/jobs/9999", headers=auth)
    assert r.status_code == 404 and r.json()["detail"] == "no job 9999"
    assert c.get("/api/v1/jobs/abc", headers=auth).status_code == 422


def test_retry_requeues_a_dead_job_and_names_the_actor(world) -> None:
    c, auth = world.client, world.auth
    r = c.post(f"/api/v1/jobs/{world.failed_job}/retry", headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body == {
        "job_id": world.failed_job,
        "state": "queued",
        "message": f"job {world.failed_job}: analysis queued again",
        "published": True,
    }
    job = world.job(world.failed_job)
    assert job.state is JobState.QUEUED and job.attempts == 0
    admin_events = [e for e in world.events(world.failed_uid) if e.event == "admin"]
    assert [e.detail for e in admin_events] == ["retry (analysis) requested by admin-api"]
    assert admin_events[0].job_id == world.failed_job
    again = c.post(f"/api/v1/jobs/{world.failed_job}/retry", headers=auth)
    assert again.status_code == 409
    assert again.json()["detail"] == f"job {world.failed_job} is queued: nothing to retry"
    assert c.post("/api/v1/jobs/4242/retry", headers=auth).status_code == 404


def test_cancel_and_its_conflicts(world) -> None:
    c, auth = world.client, world.auth
    c.post(f"/api/v1/jobs/{world.failed_job}/retry", headers=auth)
    r = c.post(f"/api/v1/jobs/{world.failed_job}/cancel", headers=auth)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert world.job(world.failed_job).state is JobState.CANCELLED
    details = [e.detail for e in world.events(world.failed_uid) if e.event == "admin"]
    assert details[-1] == "cancel requested by admin-api"
    twice = c.post(f"/api/v1/jobs/{world.failed_job}/cancel", headers=auth)
    assert twice.status_code == 409
    assert twice.json()["detail"] == f"job {world.failed_job}: cancelled → cancelled is not allowed"
    assert c.post("/api/v1/jobs/4242/cancel", headers=auth).status_code == 404


def test_retry_of_a_built_job_exports_again(world) -> None:
    r = world.client.post(f"/api/v1/jobs/{world.analysed_job}/retry", headers=world.auth)
    assert r.status_code == 200
    assert r.json()["state"] == "built" and "export queued again" in r.json()["message"]


def test_force_complete_creates_and_queues_a_job(world) -> None:
    c, auth = world.client, world.auth
    uid = generate_uid()
    data, _ = phantom_bytes(8, study_uid=uid)
    world.stack.ingest.ingest([data], calling_ae="PACS", source="dimse")
    receiving = c.get("/api/v1/studies", headers=auth, params={"status": "receiving"}).json()
    assert [r["study_instance_uid"] for r in receiving["items"]] == [uid]
    r = c.post(f"/api/v1/studies/{uid}/complete", headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "queued" and body["published"] is True
    assert body["message"] == f"study complete; job {body['job_id']} queued"
    detail = c.get(f"/api/v1/studies/{uid}", headers=auth).json()
    assert detail["status"] == "complete"
    assert [e["detail"] for e in detail["timeline"] if e["event"] == "admin"] == [
        "completion requested by admin-api"
    ]
    # Same instances, same model: no second job.
    again = c.post(f"/api/v1/studies/{uid}/complete", headers=auth).json()
    assert again["job_id"] is None and "no new job" in again["message"]
    missing = c.post("/api/v1/studies/1.2.3.4/complete", headers=auth)
    assert missing.status_code == 404 and missing.json()["detail"] == "no study 1.2.3.4"


# ----------------------------------------------------------------------------- node


def test_bundle_is_verified_once_and_again_when_it_changes(world) -> None:
    c, auth = world.client, world.auth
    b = c.get("/api/v1/bundle", headers=auth).json()
    assert b["configured"] and b["loaded"] and b["error"] is None
    assert (b["name"], b["version"], b["demo"]) == ("spinexr-demo", "1.2.0", True)
    assert b["threshold"] == 0.3 and b["display_threshold"] == 0.2
    assert b["metrics"] == {"auroc": 0.91, "sensitivity": 0.84}
    assert b["device_uid"].startswith("2.25.")
    folder = Path(b["directory"])
    (folder / "detector" / "model.pth").write_bytes(b"tampered")
    assert c.get("/api/v1/bundle", headers=auth).json()["loaded"]  # cached
    manifest = folder / "manifest.json"
    st = manifest.stat()
    os.utime(manifest, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    broken = c.get("/api/v1/bundle", headers=auth).json()
    assert not broken["loaded"] and "SHA-256 mismatch for detector/model.pth" in broken["error"]
    overview = c.get("/api/v1/overview", headers=auth).json()
    assert any(w.startswith("model bundle failed verification") for w in overview["warnings"])


def test_settings_are_shown_with_secrets_masked(world) -> None:
    world.stack.settings.destinations = [
        {"name": "web", "kind": "stowrs", "url": "http://127.0.0.1:1/dicom-web", "token": "t0p"}
    ]
    r = world.client.get("/api/v1/settings", headers=world.auth)
    assert r.status_code == 200
    data = r.json()
    assert data["http"]["api_token"] == "********"
    assert data["destinations"][0]["token"] == "********"
    assert data["_derived"]["queue"].startswith("embedded")
    assert world.token not in r.text and "t0p" not in r.text
    dests = world.client.get("/api/v1/destinations", headers=world.auth).json()
    assert dests == [
        {
            "name": "web",
            "kind": "stowrs",
            "ae_title": None,
            "host": None,
            "port": None,
            "url": "http://127.0.0.1:1/dicom-web",
            "objects": ["sr", "gsps", "reformat"],
            "verify": False,
            "auth": "bearer",
        }
    ]


def test_overview_counts_jobs_and_warns(world) -> None:
    o = world.client.get("/api/v1/overview", headers=world.auth).json()
    assert o["jobs"]["built"] == 1 and o["jobs"]["dead"] == 1
    assert o["queue_mode"] == "embedded"
    assert set(o["queue_depths"]) == {"inference", "export"}
    assert all(isinstance(v, int) for v in o["queue_depths"].values())
    assert o["activity"]["studies"] == {"receiving": 0, "complete": 2}
    assert o["activity"]["instances_received"] == 3
    assert o["activity"]["studies_received"] == 2
    assert o["disk"]["ok"] and o["disk"]["watermark_bytes"] == 2**20
    # The runner claimed both jobs: its worker id is seen in the database.
    assert len(o["workers"]["names"]) == 1 and o["workers"]["source"].startswith("database")
    assert o["warnings"][0] == DEMO_WARNING
    assert "1 job(s) dead after their last attempt" in o["warnings"]


# ----------------------------------------------------------------------------- with peers


@pytest.mark.integration
def test_echo_reports_status_and_round_trip(world) -> None:
    scp = StoreSCP(world.stack.settings)
    scp.start()
    try:
        r = world.client.post("/api/v1/destinations/self/echo", headers=world.auth)
        assert r.status_code == 200, r.text
        ok = r.json()
        assert ok["ok"] is True and ok["status"] == 0 and ok["method"] == "C-ECHO"
        assert 0 < ok["round_trip_ms"] < 5000 and ok["error"] is None
    finally:
        scp.stop()
    down = world.client.post("/api/v1/destinations/down/echo", headers=world.auth).json()
    assert down["ok"] is False and down["status"] is None
    assert "association with PACS@127.0.0.1" in down["error"]
    r = world.client.post("/api/v1/destinations/nowhere/echo", headers=world.auth)
    assert r.status_code == 404
    assert r.json()["detail"] == "no destination 'nowhere' (known: self, down)"


@pytest.mark.integration
def test_dead_letter_retry_then_export_and_turnaround(world) -> None:
    c, auth, settings = world.client, world.auth, world.stack.settings
    every = list(settings.destinations)
    # The PACS is down: with queue.max_attempts = 1 the first round is the last.
    settings.destinations = [d for d in every if d.name == "down"]
    outcome = Exporter(settings, world.stack.sessions).export(world.analysed_job)
    assert outcome.state is JobState.DEAD
    o = c.get("/api/v1/overview", headers=auth).json()
    assert "3 export attempt(s) in the dead letter (see Failures)" in o["warnings"]
    r = c.post(f"/api/v1/jobs/{world.analysed_job}/retry", headers=auth)
    assert r.status_code == 200 and r.json()["state"] == "built"
    assert "export" in r.json()["message"]
    # The PACS is back (the node's own SCP stands in for it).
    settings.destinations = [d for d in every if d.name == "self"]
    scp = StoreSCP(settings)
    scp.start()
    try:
        outcome = Exporter(settings, world.stack.sessions).export(world.analysed_job)
    finally:
        scp.stop()
    assert outcome.state is JobState.EXPORTED, outcome.failures
    o = c.get("/api/v1/overview", headers=auth).json()
    t = o["activity"]["turnaround"]
    assert o["activity"]["studies_exported"] == 1 and t["count"] == 1
    assert 0 < t["median_s"] == t["p90_s"] < 600
    assert not any("dead letter" in w for w in o["warnings"])
    exports = c.get(f"/api/v1/jobs/{world.analysed_job}", headers=auth).json()["exports"]
    assert sorted({(e["destination"], e["status"]) for e in exports}) == [
        ("down", "dead"),
        ("self", "success"),
    ]


@pytest.mark.integration
def test_dicomweb_destination_is_checked_with_qido(world, tmp_path: Path) -> None:
    orthanc = make_orthanc(tmp_path).start()
    try:
        world.stack.settings.destinations = [
            {"name": "orthanc", "kind": "stowrs", "url": orthanc.dicomweb},
            {"name": "nothing", "kind": "stowrs", "url": f"http://127.0.0.1:{free_port()}/x"},
        ]
        ok = world.client.post("/api/v1/destinations/orthanc/echo", headers=world.auth).json()
        assert ok["ok"] is True and ok["http_status"] == 200 and ok["method"] == "QIDO-RS"
        assert ok["round_trip_ms"] > 0
    finally:
        orthanc.stop()
    bad = world.client.post("/api/v1/destinations/nothing/echo", headers=world.auth).json()
    assert bad["ok"] is False and bad["error"].startswith("ConnectError")


def test_dashboard_answers_quickly_when_the_broker_is_down(make_world) -> None:
    broker = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    world = make_world(queue={"max_attempts": 1, "broker_url": broker})
    start = time.monotonic()
    r = world.client.get("/api/v1/overview", headers=world.auth)
    assert r.status_code == 200 and time.monotonic() - start < 10
    o = r.json()
    assert o["queue_mode"] == "external broker"
    assert o["queue_depths"] == {"inference": None, "export": None}
    assert "the queue broker is not reachable: queue depths unknown" in o["warnings"]
    assert o["workers"]["source"].startswith("database")
    settings = world.client.get("/api/v1/settings", headers=world.auth).json()
    assert settings["queue"]["broker_url"] == "********"


def test_a_node_without_a_bundle_says_so(make_world) -> None:
    world = make_world(models={"bundle": ""})
    b = world.client.get("/api/v1/bundle", headers=world.auth).json()
    assert b == {**b, "configured": False, "loaded": False, "error": None, "name": None}
    o = world.client.get("/api/v1/overview", headers=world.auth).json()
    assert o["warnings"][0].startswith("NO MODEL BUNDLE LOADED")
    assert DEMO_WARNING not in o["warnings"]
    # Completing a study creates its job, which waits (visibly) for a bundle.
    uid = generate_uid()
    data, _ = phantom_bytes(8, study_uid=uid)
    world.stack.ingest.ingest([data], calling_ae="PACS", source="dimse")
    done = world.client.post(f"/api/v1/studies/{uid}/complete", headers=world.auth).json()
    assert done["state"] == "complete" and done["published"] is False
    assert done["message"].endswith("(waits: no model bundle loaded)")
