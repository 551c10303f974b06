"""Export against real peers on loopback: dcmtk's storescp and our own STOW-RS server."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from export_support import attempts, built_job, dimse, job_state
from ingest_support import build_stack
from sqlalchemy import select
from testsupport import free_port, require_tool

from spinexr.node.db.models import AuditEvent
from spinexr.node.db.states import ExportStatus, JobState
from spinexr.node.export.exporter import Exporter

pytestmark = pytest.mark.integration


class StoreSCP:
    """dcmtk's storescp standing in for the PACS."""

    def __init__(self, tmp: Path, aet: str = "PACS", extra: tuple[str, ...] = ()) -> None:
        self.exe = require_tool("storescp")
        self.port = free_port()
        self.dir = tmp / f"pacs-{self.port}"
        self.dir.mkdir()
        self.aet, self.extra = aet, extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StoreSCP:
        self.proc = subprocess.Popen(
            [
                self.exe,
                "-aet",
                self.aet,
                "--fork" if False else "-v",
                "-od",
                str(self.dir),
                *self.extra,
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.4)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def received(self) -> list[str]:
        return sorted(
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in self.dir.iterdir()
        )


def test_storescp_receives_every_object_once(tmp_path: Path, monkeypatch) -> None:
    pacs = StoreSCP(tmp_path).start()
    try:
        stack, job_id, built = built_job(tmp_path, monkeypatch, [dimse(pacs.port)])
        outcome = Exporter(stack.settings, stack.sessions).export(job_id)
        assert outcome.state is JobState.EXPORTED, outcome.failures
        assert pacs.received() == sorted(b.sop_instance_uid for b in built)
        assert all(
            a.status is ExportStatus.SUCCESS and a.dimse_status == 0 for a in attempts(stack)
        )
        kinds = {pydicom.dcmread(p, stop_before_pixels=True).Modality for p in pacs.dir.iterdir()}
        assert kinds == {"SR", "PR"}
    finally:
        pacs.stop()


@pytest.mark.parametrize(
    "case", ["association_refused", "refused_context", "failure_status", "down"]
)
def test_rejecting_destination_retries_then_dead_letter(
    tmp_path: Path, monkeypatch, case: str
) -> None:
    from spinexr.node.dimse.scp import StoreSCP as NodeSCP

    pacs = None
    peer_scp = None
    if case == "association_refused":
        pacs = StoreSCP(tmp_path, extra=("--refuse",)).start()
        dest = dimse(pacs.port)
    elif case == "refused_context":
        # a PACS configured for CT only refuses the SR and GSPS presentation contexts
        cfg = tmp_path / "ct-only.cfg"
        cfg.write_text(
            "[[TransferSyntaxes]]\n[Uncompressed]\n"
            "TransferSyntax1 = LittleEndianExplicit\n"
            "[[PresentationContexts]]\n[CTOnly]\n"
            "PresentationContext1 = CTImageStorage\\Uncompressed\n"
            "[[Profiles]]\n[Default]\nPresentationContexts = CTOnly\n"
        )
        pacs = StoreSCP(tmp_path, extra=("-xf", str(cfg), "Default")).start()
        dest = dimse(pacs.port)
    elif case == "failure_status":
        # a real SCP (a second node, in its own processes) that answers every C-STORE with a
        # failure status: it accepts no nested sequences, and the SR and GSPS nest (0xC212)
        peer = build_stack(tmp_path / "peer", dicom={"max_sequence_depth": 1})
        peer_scp = NodeSCP(peer.settings)
        peer_scp.start()
        dest = dimse(peer.port, aet="SPINEXR")
    else:
        dest = dimse(free_port())  # nobody listens
    try:
        stack, job_id, _ = built_job(tmp_path, monkeypatch, [dest])
        exporter = Exporter(stack.settings, stack.sessions)
        rounds = []
        while True:
            r = exporter.export(job_id)
            rounds.append(r)
            if r.state in (JobState.DEAD, JobState.EXPORTED):
                break
            assert r.retry_in == exporter.backoff(r.attempt) and r.retry_in > 0
        assert [r.state for r in rounds] == [JobState.FAILED, JobState.FAILED, JobState.DEAD]
        assert rounds[1].retry_in == 2 * rounds[0].retry_in  # exponential backoff
        job = job_state(stack, job_id)
        assert job.state is JobState.DEAD and "dead letter after 3 export rounds" in job.last_error
        last = [a for a in attempts(stack) if a.attempt == 3]
        assert last and all(a.status is ExportStatus.DEAD and a.error for a in last)
        with stack.sessions() as s:
            moves = [e.to_state for e in s.scalars(select(AuditEvent)) if e.to_state]
        assert moves[-2:] == ["failed", "dead"]
    finally:
        if pacs is not None:
            pacs.stop()
        if peer_scp is not None:
            peer_scp.stop()


def test_destination_down_then_back_gets_the_objects_exactly_once(
    tmp_path: Path, monkeypatch
) -> None:
    pacs = StoreSCP(tmp_path)
    stack, job_id, built = built_job(tmp_path, monkeypatch, [dimse(pacs.port)])
    exporter = Exporter(stack.settings, stack.sessions)
    first = exporter.export(job_id)
    assert first.state is JobState.FAILED
    pacs.start()
    try:
        second = exporter.export(job_id)
        assert second.state is JobState.EXPORTED
        third_try_is_refused = pytest.raises(Exception, match="not waiting for export")
        with third_try_is_refused:
            exporter.export(job_id)
        assert pacs.received() == sorted(b.sop_instance_uid for b in built)
        assert len(os.listdir(pacs.dir)) == len(built)
    finally:
        pacs.stop()


def test_partial_failure_resends_only_what_is_missing(tmp_path: Path, monkeypatch) -> None:
    pacs = StoreSCP(tmp_path).start()
    try:
        stack, job_id, built = built_job(
            tmp_path, monkeypatch, [dimse(pacs.port), dimse(free_port()) | {"name": "offline"}]
        )
        exporter = Exporter(stack.settings, stack.sessions)
        assert exporter.export(job_id).state is JobState.FAILED
        assert exporter.export(job_id).state is JobState.FAILED
        sent_to_pacs = [a for a in attempts(stack) if a.destination == "pacs"]
        assert len(sent_to_pacs) == len(built)  # round 2 did not send them again
        assert len(pacs.received()) == len(built)
    finally:
        pacs.stop()


def test_stowrs_destination_with_bearer_token(tmp_path: Path, monkeypatch) -> None:
    import threading

    import uvicorn

    from spinexr.node.http.app import create_app

    # A second node plays the DICOMweb PACS (STOW-RS with a bearer token).
    peer = build_stack(tmp_path / "peer", http={"api_token": "tok"})
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(peer.settings, peer.ingest), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        url = f"http://127.0.0.1:{port}/dicomweb"
        stack, job_id, built = built_job(
            tmp_path, monkeypatch, [{"name": "web", "kind": "stowrs", "url": url, "token": "tok"}]
        )
        (tmp_path / "b").mkdir()
        r = Exporter(stack.settings, stack.sessions).export(job_id)
        assert r.state is JobState.EXPORTED, r.failures
        assert all(a.http_status == 200 for a in attempts(stack))
        with peer.sessions() as ps:
            from spinexr.node.db.models import Instance

            got = {i.sop_instance_uid for i in ps.scalars(select(Instance))}
        # The peer is a spinexr node: it acknowledges our objects and drops them as its
        # own (loop prevention), so nothing of ours is stored there.
        assert got == set() and len(attempts(stack)) == len(built)
        stack2, job2, _ = built_job(
            tmp_path / "b",
            monkeypatch,
            [{"name": "web", "kind": "stowrs", "url": url, "token": "wrong"}],
        )
        bad = Exporter(stack2.settings, stack2.sessions).export(job2)
        assert bad.state is JobState.FAILED and "HTTP 401" in bad.failures[0]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.parametrize("kind", ["dimse", "stowrs"])
def test_read_back_verification_against_orthanc(tmp_path: Path, monkeypatch, kind: str) -> None:
    from testsupport import make_orthanc

    pacs = make_orthanc(tmp_path).start()
    try:
        dest = (
            dimse(pacs.dicom_port, aet="ORTHANC", verify=True)
            if kind == "dimse"
            else {"name": "pacs", "kind": "stowrs", "url": pacs.dicomweb, "verify": True}
        )
        stack, job_id, built = built_job(tmp_path, monkeypatch, [dest])
        r = Exporter(stack.settings, stack.sessions).export(job_id)
        assert r.state is JobState.VERIFIED, r.failures
        rows = attempts(stack)
        assert len(rows) == len(built) and all(a.verified for a in rows)
    finally:
        pacs.stop()
