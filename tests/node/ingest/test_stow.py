"""STOW-RS through a real HTTP server, with dicomweb-client as the client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pydicom
import pytest
import requests
import uvicorn
from dicomweb_client.api import DICOMwebClient
from ingest_support import Stack, build_stack, phantom_bytes
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from testsupport import free_port

from spinexr.node.db.models import Instance
from spinexr.node.http.app import create_app

TOKEN = "s3cret-token"


@pytest.fixture
def server(tmp_path, monkeypatch) -> Iterator[tuple[Stack, str]]:
    monkeypatch.chdir(tmp_path)
    stack = build_stack(tmp_path, http={"api_token": TOKEN}, dicom={"max_dataset_bytes": 2**20})
    port = free_port()
    config = uvicorn.Config(
        create_app(stack.settings, stack.ingest), host="127.0.0.1", port=port, log_level="warning"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield stack, f"http://127.0.0.1:{port}/dicomweb"
    srv.should_exit = True
    thread.join(timeout=10)


def client(url: str, token: str | None = TOKEN) -> DICOMwebClient:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return DICOMwebClient(url=url, headers=headers)


def count(stack: Stack) -> int:
    with stack.sessions() as s:
        return s.scalar(select(func.count()).select_from(Instance))


def datasets(n: int, study_uid: str) -> list[pydicom.Dataset]:
    return [phantom_bytes(20 + i, study_uid=study_uid, compressed=bool(i % 2))[1] for i in range(n)]


def test_stow_stores_a_study_with_a_standard_response(server) -> None:
    stack, url = server
    uid = generate_uid()
    response = client(url).store_instances(datasets(3, uid))
    refs = response.ReferencedSOPSequence
    assert len(refs) == 3 and "FailedSOPSequence" not in response
    assert {r.ReferencedSOPInstanceUID for r in refs} == {
        ds.SOPInstanceUID for ds in datasets(3, uid)
    }
    assert count(stack) == 3
    with stack.sessions() as s:
        assert {i.source for i in s.scalars(select(Instance))} == {"stowrs"}


def test_stow_to_a_study_refuses_instances_of_other_studies(server) -> None:
    stack, url = server
    uid = generate_uid()
    mine = datasets(1, uid)
    other = [phantom_bytes(40, study_uid=generate_uid())[1]]
    # 202 Accepted: some stored, some failed (dicomweb-client returns the body)
    body = client(url).store_instances(mine + other, study_instance_uid=uid)
    assert len(body.ReferencedSOPSequence) == 1
    assert body.FailedSOPSequence[0].FailureReason == 0xA900
    assert count(stack) == 1


def test_stow_needs_the_bearer_token(server) -> None:
    stack, url = server
    for token in (None, "wrong"):
        with pytest.raises(requests.HTTPError) as info:
            client(url, token).store_instances(datasets(1, generate_uid()))
        assert info.value.response.status_code == 401
    assert count(stack) == 0


def test_stow_reports_unparseable_and_oversized_parts(server) -> None:
    stack, url = server
    boundary = "XyZ"
    good, _ = phantom_bytes(50)
    big, _ = phantom_bytes(51, size=(1024, 1024))  # > 1 MiB limit
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
            for part in (good, b"garbage, not DICOM", big)
        )
        + f"--{boundary}--\r\n".encode()
    )
    r = requests.post(
        f"{url}/studies",
        data=body,
        timeout=30,
        headers={
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        },
    )
    assert r.status_code == 202, r.text
    ds = pydicom.Dataset.from_json(r.json())
    assert len(ds.ReferencedSOPSequence) == 1
    reasons = sorted(item.FailureReason for item in ds.FailedSOPSequence)
    assert reasons == [0xA701, 0xC210]
    assert count(stack) == 1 and list(stack.spool.tmp.iterdir()) == []


def test_stow_rejects_other_media_types(server) -> None:
    _, url = server
    r = requests.post(
        f"{url}/studies",
        data=b"{}",
        timeout=10,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    assert r.status_code == 415


def test_stow_full_disk_is_503(server, monkeypatch) -> None:
    stack, url = server
    monkeypatch.setattr(stack.spool, "free_bytes", lambda: 0)
    good, _ = phantom_bytes(60)
    body = b"--B\r\nContent-Type: application/dicom\r\n\r\n" + good + b"\r\n--B--\r\n"
    r = requests.post(
        f"{url}/studies",
        data=body,
        timeout=10,
        headers={
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=B',
        },
    )
    assert r.status_code == 503 and "watermark" in r.text
    assert r.headers["Retry-After"]
    assert count(stack) == 0
