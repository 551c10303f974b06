"""Admin web pages: login, session cookie, CSRF, dashboard, studies, previews, failures."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from ingest_support import build_stack
from outputs_support import ABNORMAL_BOXES, Variant, make_study
from PIL import Image

from spinexr.node.db.states import JobState
from spinexr.node.http.admin.auth import SESSION_COOKIE, SESSION_SECONDS, issue_session
from spinexr.node.http.admin.dashboard import DEMO_WARNING
from spinexr.node.http.admin.preview import preview_dir
from spinexr.node.http.app import create_app
from spinexr.node.outputs.boxes import CLASS_COLOURS


def box_pixels(png: bytes, colour: tuple[int, int, int], box: tuple[int, int, int, int]) -> int:
    """Pixels within 60 of ``colour`` on the outline band of ``box`` (x0, y0, x1, y1)."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int32)
    x0, y0, x1, y1 = box
    band = np.zeros(rgb.shape[:2], dtype=bool)
    band[y0 - 3 : y1 + 4, x0 - 3 : x1 + 4] = True
    band[y0 + 4 : y1 - 3, x0 + 4 : x1 - 3] = False
    close = np.abs(rgb - np.asarray(colour)).sum(axis=2) < 60
    return int((close & band).sum())


# ----------------------------------------------------------------------------- auth


def test_pages_are_refused_while_no_token_is_set(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    stack = build_stack(tmp_path)
    with TestClient(create_app(stack.settings, stack.ingest)) as client:
        for path in ("/admin/", "/admin/login", "/admin/failures"):
            r = client.get(path)
            assert r.status_code == 503
            assert "admin pages disabled: set http.api_token" in r.text
        assert client.post("/admin/login", data={"token": ""}).status_code == 503


def test_login_sets_an_httponly_strict_cookie_and_honours_next(world) -> None:
    c = world.client
    r = c.get("/admin/studies?uid=1.2", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/admin/login?next=%2Fadmin%2Fstudies%3Fuid%3D1.2"
    form = c.get(r.headers["location"])
    assert form.status_code == 200 and 'name="next" value="/admin/studies?uid=1.2"' in form.text
    assert '<label for="token">' in form.text

    wrong = c.post("/admin/login", data={"token": "nope"}, follow_redirects=False)
    assert wrong.status_code == 401 and "Wrong token." in wrong.text
    assert "set-cookie" not in wrong.headers

    ok = c.post(
        "/admin/login",
        data={"token": world.token, "next": "/admin/studies?uid=1.2"},
        follow_redirects=False,
    )
    assert ok.status_code == 303 and ok.headers["location"] == "/admin/studies?uid=1.2"
    cookie = ok.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert world.token not in cookie
    assert c.get("/admin/studies", follow_redirects=False).status_code == 200

    # No open redirect after login.
    evil = c.post(
        "/admin/login",
        data={"token": world.token, "next": "//evil.example/admin"},
        follow_redirects=False,
    )
    assert evil.headers["location"] == "/admin/"


def test_tampered_or_expired_sessions_are_sent_to_login(world) -> None:
    c = world.client
    world.login()
    good = c.cookies[SESSION_COOKIE]
    expiry, nonce, mac = good.split(".")
    for value in (
        f"{int(expiry) + 999}.{nonce}.{mac}",  # extended expiry, old signature
        f"{expiry}.{nonce}.{'0' * len(mac)}",
        issue_session(world.token, now=time.time() - SESSION_SECONDS - 1),
        issue_session("another-token"),
        "garbage",
    ):
        c.cookies.set(SESSION_COOKIE, value)
        r = c.get("/admin/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/admin/login"), value


def test_logout_needs_csrf_and_ends_the_session(world) -> None:
    c = world.client
    world.login()
    csrf = world.csrf("/admin/")
    assert c.post("/admin/logout", data={"csrf": "0" * 64}).status_code == 403
    r = c.post("/admin/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin/login"
    assert c.get("/admin/", follow_redirects=False).status_code == 303


# ----------------------------------------------------------------------------- pages


def test_dashboard_shows_queues_jobs_disk_workers_and_warnings(world) -> None:
    world.login()
    r = world.client.get("/admin/")
    assert r.status_code == 200
    page = r.text
    assert r.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    assert page.count(DEMO_WARNING) == 2  # banner and warning list
    assert "1 job(s) dead after their last attempt" in page
    assert "Source: database: job leases held now and analyses started in the last hour" in page
    assert "spinexr-demo 1.2.0" in page and "auroc" in page
    for text in ("inference", "export", "Turnaround median", "Headroom"):
        assert text in page
    # Each destination, what it receives and what each viewer family shows of it.
    assert "Destinations and what their readers see" in page
    assert re.search(
        r"<h3>self <span class=\"muted\">\(dimse; receives SR, GSPS, CT reformat\)", page
    )
    assert (
        "<td>OHIF v3</td><td>SR, CT reformat</td><td><strong>Secondary Capture</strong></td>"
        in page
    )
    assert re.search(r'<span class="state dead">dead</span></a></td><td class="num">1<', page)


def test_study_list_searches_and_refuses_unknown_states(world) -> None:
    world.login()
    c = world.client
    page = c.get("/admin/studies").text
    assert world.analysed_uid in page and world.failed_uid in page and "2 studies" in page
    accession = str(world.sources[0].AccessionNumber)
    found = c.get("/admin/studies", params={"accession": accession}).text
    assert world.analysed_uid in found and world.failed_uid not in found
    assert f'value="{accession}"' in found  # the form keeps the query
    dead = c.get("/admin/studies", params={"job_state": "dead"}).text
    assert world.failed_uid in dead and world.analysed_uid not in dead
    bad = c.get("/admin/studies", params={"job_state": "bogus"})
    assert bad.status_code == 422 and "unknown job state &#39;bogus&#39;" in bad.text


def test_study_page_shows_patient_findings_timeline_and_previews(world) -> None:
    world.login()
    c = world.client
    r = c.get(f"/admin/studies/{world.analysed_uid}")
    assert r.status_code == 200
    page = r.text
    ds = world.sources[0]
    assert str(ds.PatientName) in page and str(ds.PatientID) in page
    assert "Osteophytes" in page and "0.87" in page and "Disc space narrowing" in page
    assert "(demo bundle)" in page
    assert "analyzing → built" in page
    for source in world.sources:
        sop = str(source.SOPInstanceUID)
        src = f"/admin/studies/{world.analysed_uid}/instances/{sop}/preview.png"
        assert f'src="{src}"' in page
    assert f'alt="Image {ds.SOPInstanceUID} with 2 AI finding box(es) drawn"' in page

    sop = str(ds.SOPInstanceUID)
    url = f"/admin/studies/{world.analysed_uid}/instances/{sop}/preview.png"
    png = c.get(url)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    assert image.size == (int(ds.Columns), int(ds.Rows))
    # The GSPS draws the osteophyte box in the class colour.
    o = ABNORMAL_BOXES[0][0]
    box = (int(o.xmin), int(o.ymin), int(o.xmax), int(o.ymax))
    assert box_pixels(png.content, CLASS_COLOURS[o.label], box) > 100
    cached = list(preview_dir(world.stack.settings).glob("*.png"))
    assert len(cached) == 1
    inode = cached[0].stat().st_ino  # a render writes a new file (atomic rename)
    assert c.get(url).content == png.content and cached[0].stat().st_ino == inode

    missing = c.get(f"/admin/studies/{world.analysed_uid}/instances/1.2.3/preview.png")
    assert missing.status_code == 404 and "no instance 1.2.3 in study" in missing.text
    assert c.get("/admin/studies/9.9.9").status_code == 404
    # Without a session, no image.
    c.cookies.clear()
    assert c.get(url, follow_redirects=False).status_code == 303


def test_preview_without_gsps_draws_the_result_boxes(make_world) -> None:
    world = make_world(output={"sr": True, "gsps": False})
    world.login()
    ds = world.sources[1]  # the lateral view: one surgical implant box
    url = f"/admin/studies/{world.analysed_uid}/instances/{ds.SOPInstanceUID}/preview.png"
    png = world.client.get(url)
    assert png.status_code == 200
    implant = ABNORMAL_BOXES[1][0]
    colour = CLASS_COLOURS[implant.label]
    box = (3, int(implant.ymin) + 3, int(implant.xmax) - 4, int(implant.ymax))
    assert box_pixels(png.content, colour, box) > 100


def test_page_text_is_escaped(world) -> None:
    sources = make_study(12, Variant())
    for ds in sources:
        ds.PatientName = "<script>alert(1)</script>"
    uid = world.ingest(sources)
    world.login()
    page = world.client.get(f"/admin/studies/{uid}").text
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


# ----------------------------------------------------------------------------- actions


def test_failures_page_retry_button_with_csrf_and_flash(world) -> None:
    world.login()
    c = world.client
    page = c.get("/admin/failures").text
    assert f'id="failed-job-{world.failed_job}"' in page and "is missing from the spool" in page
    assert f'action="/admin/jobs/{world.failed_job}/retry"' in page
    csrf = world.csrf("/admin/failures")
    url = f"/admin/jobs/{world.failed_job}/retry"
    for bad in ({}, {"csrf": "f" * 64}):
        r = c.post(url, data={**bad, "next": "/admin/failures"})
        assert r.status_code == 403 and "invalid or missing CSRF token" in r.text
    assert world.job(world.failed_job).state is JobState.DEAD

    r = c.post(url, data={"csrf": csrf, "next": "/admin/failures"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin/failures"
    assert world.job(world.failed_job).state is JobState.QUEUED
    shown = c.get("/admin/failures").text
    message = f"job {world.failed_job}: analysis queued again (now queued)"
    assert f'<p class="flash ok" role="status" id="flash">{message}</p>' in shown
    assert f'id="failed-job-{world.failed_job}"' not in shown
    assert message not in c.get("/admin/failures").text  # shown once
    details = [e.detail for e in world.events(world.failed_uid) if e.event == "admin"]
    assert details == ["retry (analysis) requested by admin-web"]

    again = c.post(url, data={"csrf": csrf, "next": "/admin/failures"})
    assert f"job {world.failed_job} is queued: nothing to retry" in again.text
    assert 'class="flash error"' in again.text
    unknown = c.post("/admin/jobs/999/retry", data={"csrf": csrf})
    assert "no job 999" in unknown.text


def test_cancel_and_complete_forms_on_the_study_page(world) -> None:
    world.login()
    c = world.client
    study = f"/admin/studies/{world.failed_uid}"
    csrf = world.csrf(study)
    c.post(f"/admin/jobs/{world.failed_job}/retry", data={"csrf": csrf, "next": study})
    r = c.post(f"/admin/jobs/{world.failed_job}/cancel", data={"csrf": csrf, "next": study})
    assert r.status_code == 200 and f"job {world.failed_job} cancelled" in r.text
    assert world.job(world.failed_job).state is JobState.CANCELLED
    r = c.post(f"{study}/complete", data={"csrf": csrf})
    assert "study complete; no new job" in r.text
    details = [e.detail for e in world.events(world.failed_uid) if e.event == "admin"]
    assert details[-2:] == ["cancel requested by admin-web", "completion requested by admin-web"]


def test_a_ct_study_page_lists_its_series_not_a_preview_per_slice(world) -> None:
    from ct_ingest_support import ct_series

    slices = ct_series(40)
    localizer = ct_series(2, study_uid=str(slices[0].StudyInstanceUID))
    study_uid = world.ingest([*slices, *localizer])
    world.login()
    page = world.client.get(f"/admin/studies/{study_uid}").text
    assert "CT series received (2)" in page
    assert str(slices[0].SeriesInstanceUID) in page and ">40<" in page
    assert "/preview.png" not in page  # no figure per slice
    assert "Images (0)" in page


def test_dashboard_says_which_analyses_wait_for_models_being_prepared(world) -> None:
    import os

    from spinexr.pipeline.preparation import (
        Preparation,
        clear_preparation,
        write_preparation,
    )

    bundle = world.stack.settings.models.bundle
    assert bundle is not None
    write_preparation(
        bundle,
        Preparation(
            pid=os.getpid(),
            identity="x@1",
            step=7,
            steps=8,
            text="CT models",
            ready=("radiograph",),
        ),
    )
    try:
        world.login()
        page = " ".join(world.client.get("/admin/").text.split())
        assert "Models being prepared: step 7/8, CT models." in page
        assert "Ready: radiograph analyses." in page
        assert "until their models are ready: CT analyses." in page
        api = world.client.get("/api/v1/bundle", headers={"Authorization": f"Bearer {world.token}"})
        assert api.json()["preparing"]["waiting"] == ["CT analyses"]
    finally:
        clear_preparation(bundle)
    assert "Models being prepared" not in world.client.get("/admin/").text
