"""Export against destinations that misbehave (issue 19, part 3).

Each peer is real and on loopback: a pynetdicom SCP that aborts in the middle of a study or
never answers, a socket that accepts connections and says nothing, a host name that cannot
resolve (``.invalid``, RFC 6761), and an HTTP server answering STOW-RS with 500, then 503
and ``Retry-After``, then storing. Each ends retried and delivered exactly once, or dead with
a reason an administrator can read, and no round outlives its timeouts.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest
from export_support import attempts, built_job, dimse, job_state
from pynetdicom import AE, AllStoragePresentationContexts, evt
from testsupport import free_port

from spinexr.node.db.states import ExportStatus, JobState
from spinexr.node.export.exporter import Exporter
from spinexr.node.export.transport import retry_after_seconds

pytestmark = pytest.mark.integration

TIMEOUT = 2.0
"""``dicom.scu_timeout`` for these tests: every wait on a silent peer ends after it."""


class FaultySCP:
    """A pynetdicom Storage SCP that misbehaves on its first association(s).

    Parameters
    ----------
    abort_at : int or None
        In the first association, the C-STORE (1-based) at which the SCP sends an A-ABORT
        instead of an answer (the objects before it are stored and acknowledged).
    silent : bool
        Never answer a C-STORE (the handler waits until the SCP stops).
    """

    def __init__(self, abort_at: int | None = None, silent: bool = False) -> None:
        self.abort_at, self.silent = abort_at, silent
        self.received: list[str] = []
        self.associations = 0
        self.order: dict[int, int] = {}  # id(association) -> its number
        self.stores: dict[int, int] = {}  # id(association) -> C-STOREs so far
        self.port = free_port()
        self.release = threading.Event()
        ae = AE(ae_title="PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        self.ae = ae

    def _on_open(self, event: evt.Event) -> None:
        self.associations += 1
        self.order[id(event.assoc)] = self.associations

    def _on_store(self, event: evt.Event) -> int:
        assoc = event.assoc
        self.stores[id(assoc)] = self.stores.get(id(assoc), 0) + 1
        if self.silent:
            self.release.wait(30)
            return 0xA700
        if self.order[id(assoc)] == 1 and self.stores[id(assoc)] == self.abort_at:
            assoc.abort()  # the A-ABORT goes instead of the answer
            return 0xA700
        self.received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    def __enter__(self) -> FaultySCP:
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_CONN_OPEN, self._on_open), (evt.EVT_C_STORE, self._on_store)],
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port whose listener completes TCP handshakes and never reads or writes."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def run_rounds(exporter: Exporter, job_id: int) -> list:
    rounds = []
    while True:
        began = time.monotonic()
        r = exporter.export(job_id)
        r.seconds = time.monotonic() - began  # type: ignore[attr-defined]
        rounds.append(r)
        if r.state is not JobState.FAILED:
            return rounds


def test_a_pacs_that_aborts_mid_study_gets_the_rest_next_round_exactly_once(
    tmp_path: Path, monkeypatch
) -> None:
    with FaultySCP(abort_at=2) as pacs:
        stack, job_id, built = built_job(
            tmp_path, monkeypatch, [dimse(pacs.port)], dicom={"scu_timeout": TIMEOUT}
        )
        assert len(built) >= 2
        rounds = run_rounds(Exporter(stack.settings, stack.sessions), job_id)
        assert [r.state for r in rounds] == [JobState.FAILED, JobState.EXPORTED]
        first = [a for a in attempts(stack) if a.attempt == 1]
        assert [a.status for a in first][:1] == [ExportStatus.SUCCESS]
        aborted = [a for a in first if a.status is ExportStatus.FAILED]
        assert aborted[0].error == "the peer aborted the association (A-ABORT) before answering"
        assert all("the association ended at an earlier file" in a.error for a in aborted[1:])
        assert sorted(pacs.received) == sorted(b.sop_instance_uid for b in built)
        assert pacs.associations == 2


def test_a_pacs_that_never_answers_ends_each_round_after_the_timeout(
    tmp_path: Path, monkeypatch
) -> None:
    with FaultySCP(silent=True) as pacs:
        stack, job_id, _ = built_job(
            tmp_path, monkeypatch, [dimse(pacs.port)], dicom={"scu_timeout": TIMEOUT}
        )
        rounds = run_rounds(Exporter(stack.settings, stack.sessions), job_id)
    assert [r.state for r in rounds] == [JobState.FAILED, JobState.FAILED, JobState.DEAD]
    assert all(r.seconds < 4 * TIMEOUT for r in rounds), [r.seconds for r in rounds]
    job = job_state(stack, job_id)
    assert "timed out: no answer within 2 s (dicom.scu_timeout)" in job.last_error


def test_a_listener_that_never_speaks_times_out_each_round(
    tmp_path: Path, monkeypatch, black_hole: int
) -> None:
    stack, job_id, _ = built_job(
        tmp_path, monkeypatch, [dimse(black_hole)], dicom={"scu_timeout": TIMEOUT}
    )
    rounds = run_rounds(Exporter(stack.settings, stack.sessions), job_id)
    assert rounds[-1].state is JobState.DEAD
    assert all(r.seconds < 3 * TIMEOUT for r in rounds), [r.seconds for r in rounds]
    assert "timed out: no answer within 2 s" in job_state(stack, job_id).last_error


@pytest.mark.parametrize("kind", ["dimse", "stowrs"])
def test_a_host_name_that_does_not_resolve_is_dead_with_that_reason(
    tmp_path: Path, monkeypatch, kind: str
) -> None:
    dest = (
        dimse(104) | {"host": "pacs.spinexr.invalid"}
        if kind == "dimse"
        else {"name": "web", "kind": "stowrs", "url": "http://pacs.spinexr.invalid/dicomweb"}
    )
    stack, job_id, _ = built_job(tmp_path, monkeypatch, [dest], dicom={"scu_timeout": TIMEOUT})
    rounds = run_rounds(Exporter(stack.settings, stack.sessions), job_id)
    assert [r.state for r in rounds] == [JobState.FAILED, JobState.FAILED, JobState.DEAD]
    error = job_state(stack, job_id).last_error
    assert "host name 'pacs.spinexr.invalid' does not resolve" in error
    assert all(a.status is ExportStatus.DEAD for a in attempts(stack) if a.attempt == 3)


class StowPACS(ThreadingHTTPServer):
    """A DICOMweb STOW-RS endpoint answering a scripted status per request, then storing.

    ``script`` holds ``(status, headers)`` for the first requests; later ones store the
    instances (each part read with pydicom) and answer 200 with their references.
    """

    def __init__(self, script: list[tuple[int, dict[str, str]]], silent: bool = False) -> None:
        self.script, self.silent = list(script), silent
        self.received: list[str] = []
        self.requests = 0
        self.gone = threading.Event()
        super().__init__(("127.0.0.1", 0), StowHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/dicomweb"

    def __enter__(self) -> StowPACS:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gone.set()
        self.shutdown()
        self.server_close()


class StowHandler(BaseHTTPRequestHandler):
    server: StowPACS

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests += 1
        if self.server.silent:
            self.server.gone.wait(30)
            return
        if self.server.script:
            status, headers = self.server.script.pop(0)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        boundary = self.headers.get_param("boundary").encode()
        refs = []
        for part in body.split(b"--" + boundary)[1:-1]:
            payload = part.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n")
            ds = pydicom.dcmread(io.BytesIO(payload))
            self.server.received.append(str(ds.SOPInstanceUID))
            refs.append(
                {
                    "00081150": {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
                    "00081155": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]},
                }
            )
        answer = json.dumps({"00081199": {"vr": "SQ", "Value": refs}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


def stow(url: str) -> dict:
    return {"name": "web", "kind": "stowrs", "url": url}


def test_stow_500_then_503_with_retry_after_is_honoured_then_delivered_once(
    tmp_path: Path, monkeypatch
) -> None:
    with StowPACS([(500, {}), (503, {"Retry-After": "120"})]) as pacs:
        stack, job_id, built = built_job(
            tmp_path, monkeypatch, [stow(pacs.url)], max_attempts=5, dicom={"scu_timeout": TIMEOUT}
        )
        exporter = Exporter(stack.settings, stack.sessions)
        rounds = run_rounds(exporter, job_id)
    assert [r.state for r in rounds] == [JobState.FAILED, JobState.FAILED, JobState.EXPORTED]
    assert rounds[0].retry_in == exporter.backoff(1)  # no Retry-After: our backoff
    assert rounds[1].retry_in == 120.0 > exporter.backoff(2)  # the destination's wish
    second = [a for a in attempts(stack) if a.attempt == 2]
    assert {a.error for a in second} == {"HTTP 503 (Retry-After 120 s)"}
    assert {a.http_status for a in second} == {503}
    assert all(
        dt.timedelta(seconds=110) < a.next_try_at - a.finished_at <= dt.timedelta(seconds=121)
        for a in second
    )
    assert "HTTP 500" in rounds[0].failures[0]
    assert sorted(pacs.received) == sorted(b.sop_instance_uid for b in built)
    assert pacs.requests == 3


def test_stow_retry_after_past_the_cap_waits_an_hour_at_most(tmp_path: Path, monkeypatch) -> None:
    with StowPACS([(503, {"Retry-After": "86400"})]) as pacs:
        stack, job_id, _ = built_job(
            tmp_path, monkeypatch, [stow(pacs.url)], dicom={"scu_timeout": TIMEOUT}
        )
        first = Exporter(stack.settings, stack.sessions).export(job_id)
    assert first.state is JobState.FAILED and first.retry_in == 3600.0


def test_a_stow_destination_that_never_answers_times_out(tmp_path: Path, monkeypatch) -> None:
    with StowPACS([], silent=True) as pacs:
        stack, job_id, _ = built_job(
            tmp_path, monkeypatch, [stow(pacs.url)], dicom={"scu_timeout": TIMEOUT}
        )
        began = time.monotonic()
        first = Exporter(stack.settings, stack.sessions).export(job_id)
        took = time.monotonic() - began
    assert first.state is JobState.FAILED and took < 3 * TIMEOUT
    assert "timed out: no answer within 2 s (dicom.scu_timeout)" in first.failures[0]


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = dt.datetime(2026, 12, 7, 12, 0, 0, tzinfo=dt.UTC)
    assert retry_after_seconds({"Retry-After": "30"}, now) == 30.0
    assert retry_after_seconds({"Retry-After": "Mon, 07 Dec 2026 12:02:00 GMT"}, now) == 120.0
    assert retry_after_seconds({"Retry-After": "Mon, 07 Dec 2026 11:00:00 GMT"}, now) == 0.0
    assert retry_after_seconds({"Retry-After": "soon"}, now) is None
    assert retry_after_seconds({}, now) is None


class WorkerKilled(BaseException):
    """Stands in for SIGKILL: nothing after it in the round runs."""


def test_a_round_killed_midway_resends_only_what_was_not_acknowledged(
    tmp_path: Path, monkeypatch
) -> None:
    from spinexr.node.jobs.reconciler import Reconciler

    with FaultySCP() as pacs:
        stack, job_id, built = built_job(
            tmp_path, monkeypatch, [dimse(pacs.port)], dicom={"scu_timeout": TIMEOUT}
        )
        assert len(built) >= 3
        exporter = Exporter(stack.settings, stack.sessions)
        record = exporter._record_acknowledged
        calls = []

        def record_then_die(*args: object) -> None:
            record(*args)
            calls.append(args)
            if len(calls) == 2:  # the process dies right after the second acknowledgement
                raise WorkerKilled

        monkeypatch.setattr(exporter, "_record_acknowledged", record_then_die)
        with pytest.raises(WorkerKilled):
            exporter.export(job_id)
        assert job_state(stack, job_id).state is JobState.EXPORTING
        monkeypatch.undo()
        # serve starts again: the reconciler finds the interrupted export
        counts = Reconciler(
            stack.settings, stack.sessions, lambda *_: None, lambda _: None
        ).reconcile(startup=True)
        assert counts["export"] == 1
        again = Exporter(stack.settings, stack.sessions).export(job_id)
        assert again.state is JobState.EXPORTED
        assert sorted(pacs.received) == sorted(b.sop_instance_uid for b in built)  # once each
        second = [a for a in attempts(stack) if a.attempt == 2]
        assert len(second) == len(built) - 2  # only what was not acknowledged
