"""Every SCU path ends within ``dicom.scu_timeout``: a peer that never answers, a black hole.

Two loopback stand-ins, no network: a *silent peer* (a listening socket that the kernel
accepts connections for and that never reads or answers: the association request waits
for ACSE) and a *black hole* (a listening socket with a backlog of 0, already full: the
kernel drops every further SYN, so the TCP connection itself never completes, as for a host
that drops packets).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_support import build_stack, write_study
from testsupport import EXE

from spinexr.node.admin.destinations import check_destination
from spinexr.node.export.transport import send_dimse, verify_dimse
from spinexr.node.settings import Destination

TIMEOUT = 1.0
SLACK = 3.0
"""Seconds allowed beyond the timeout (thread hand-offs, a loaded two-core machine)."""


@pytest.fixture
def silent_peer() -> Iterator[int]:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        yield int(srv.getsockname()[1])


@pytest.fixture
def black_hole() -> Iterator[int]:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(0)
        port = int(srv.getsockname()[1])
        with socket.create_connection(("127.0.0.1", port)):  # fills the backlog
            probe = socket.socket()
            probe.settimeout(0.3)
            with probe, pytest.raises(OSError):
                probe.connect(("127.0.0.1", port))  # the kernel drops this SYN
            yield port


def _cli(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINEXR_")}
    env["SPINEXR_DICOM__SCU_TIMEOUT"] = str(TIMEOUT)
    start = time.monotonic()
    proc = subprocess.run(
        [str(EXE), *args], env=env, capture_output=True, text=True, timeout=25, cwd="/"
    )
    return proc, time.monotonic() - start


@pytest.mark.parametrize("peer", ["silent_peer", "black_hole"])
def test_echo_ends_within_the_setting_with_one_clear_line(
    peer: str, request: pytest.FixtureRequest
) -> None:
    port = request.getfixturevalue(peer)
    proc, elapsed = _cli("echo", f"127.0.0.1:{port}")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"error: association with ANY-SCP@127.0.0.1:{port} timed out: no answer within 1 s "
        "(dicom.scu_timeout)"
    ], proc.stderr
    # The interpreter and click start in ~1-2 s; the old 30 s wait is far above this.
    assert elapsed < TIMEOUT + SLACK + 4, elapsed


def test_send_ends_within_the_setting(silent_peer: int, tmp_path: Path) -> None:
    files = write_study(tmp_path / "study")
    proc, elapsed = _cli("send", str(files[0]), "--to", f"127.0.0.1:{silent_peer}")
    assert proc.returncode == 1
    assert "timed out: no answer within 1 s" in proc.stderr
    assert elapsed < TIMEOUT + SLACK + 4, elapsed


def test_echo_option_overrides_the_setting(black_hole: int) -> None:
    proc, elapsed = _cli("echo", f"127.0.0.1:{black_hole}", "--timeout", "0.5")
    assert "no answer within 0.5 s" in proc.stderr
    assert elapsed < 0.5 + SLACK + 4, elapsed


@pytest.mark.parametrize("peer", ["silent_peer", "black_hole"])
def test_export_read_back_and_destination_test_end_within_the_setting(
    peer: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = request.getfixturevalue(peer)
    monkeypatch.chdir(tmp_path)
    dest = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": port}
    stack = build_stack(tmp_path, dicom={"scu_timeout": TIMEOUT}, destinations=[dest])
    settings = stack.settings
    destination = Destination(**dest)
    files = write_study(tmp_path / "study")

    start = time.monotonic()
    # The exporter passes settings.dicom.scu_timeout (see Exporter._send/_verify).
    outcomes = send_dimse(destination, files, "SPINEXR", settings.dicom.scu_timeout)
    assert time.monotonic() - start < TIMEOUT + SLACK
    assert [o.ok for o in outcomes] == [False, False]
    assert "timed out" in (outcomes[0].error or "")

    start = time.monotonic()
    found = verify_dimse(destination, "1.2.3", "SPINEXR", settings.dicom.scu_timeout)
    assert found == set()
    assert time.monotonic() - start < TIMEOUT + SLACK

    start = time.monotonic()
    check = check_destination(settings, destination)  # the admin API's test: no timeout given
    assert not check.ok and "timed out" in (check.error or "")
    assert time.monotonic() - start < TIMEOUT + SLACK


def test_exporter_round_uses_the_setting(
    black_hole: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One export round against a black hole: failed with the reason, within the timeout."""
    from export_support import built_job, dimse

    from spinexr.node.db.states import JobState
    from spinexr.node.export.exporter import Exporter

    stack, job_id, _ = built_job(
        tmp_path, monkeypatch, [dimse(black_hole)], dicom={"scu_timeout": TIMEOUT}
    )
    start = time.monotonic()
    outcome = Exporter(stack.settings, stack.sessions).export(job_id)
    assert time.monotonic() - start < TIMEOUT + SLACK
    assert outcome.state is not JobState.EXPORTED
    assert any("timed out" in str(f) for f in outcome.failures), outcome.failures
