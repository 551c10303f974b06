"""The acceptance path on a live `spinexr-node serve`: dcmtk peers, timer, CLI inspection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from ingest_support import write_study
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from testsupport import EXE, NodeProcess, make_node, require_tool, start_storescp, wait_for

pytestmark = pytest.mark.integration


def test_phantom_study_over_storescu_completes_into_exactly_one_job(tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    node = make_node(
        tmp_path,
        SPINEXR_STUDY__COMPLETION_SECONDS="1",
        SPINEXR_DICOM__ALLOWED_CALLING_AETS='["PACS"]',
    ).start()
    try:
        files = write_study(tmp_path / "study")

        def send(aet: str = "PACS") -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    storescu,
                    "-R",
                    "-xv",
                    "-aet",
                    aet,
                    "-aec",
                    "SPINEXR",
                    "127.0.0.1",
                    str(node.dicom_port),
                    *map(str, files),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )

        assert send().returncode == 0
        rows = json.loads(node.cli("studies", "list", "--json"))
        assert len(rows) == 1 and rows[0]["instances"] == 2
        uid = rows[0]["study_instance_uid"]

        def one_job():
            r = json.loads(node.cli("studies", "list", "--json"))[0]
            return r if r["status"] == "complete" and r["job_id"] else None

        first = wait_for(one_job, 20, "study completion", node)
        assert first["job_state"] == "complete"
        assert send().returncode == 0  # the PACS routes it again
        time.sleep(2.5)  # longer than the completion timer
        shown = json.loads(node.cli("studies", "show", uid, "--json"))
        assert len(shown["jobs"]) == 1, shown["jobs"]
        assert len(shown["instances"]) == 2
        assert [e["to_state"] for e in shown["timeline"] if e["to_state"]] == [
            "received",
            "complete",
        ]
        text = node.cli("studies", "show", uid)
        assert "timeline:" in text and uid in text

        refused = send(aet="STRANGER")
        assert refused.returncode != 0
        assert "calling AE 'STRANGER' is not allowed" in node.log()
    finally:
        assert node.stop() == 0, node.log()


def test_send_and_echo_commands_against_dcmtk_storescp(tmp_path: Path) -> None:
    out = tmp_path / "received"
    peer, port = start_storescp(out)
    try:
        time.sleep(0.5)
        files = write_study(tmp_path / "study")
        echo = subprocess.run(
            [str(EXE), "echo", f"127.0.0.1:{port}", "--called", "PACS"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert echo.returncode == 0 and "0x0000" in echo.stdout
        sent = subprocess.run(
            [
                str(EXE),
                "send",
                str(tmp_path / "study"),
                "--to",
                f"127.0.0.1:{port}",
                "--called",
                "PACS",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "status summary: 0x0000: 2" in sent.stdout
        assert "sent 2/2 files" in sent.stderr
        assert len(list(out.iterdir())) == len(files)
    finally:
        peer.terminate()
        peer.wait(timeout=10)


def listener_pid(node: NodeProcess) -> int | None:
    """The DICOM listener process among serve's children (any of its threads may start it)."""
    assert node.proc is not None
    for children in Path(f"/proc/{node.proc.pid}/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spinexr.node.dimse.listener" in cmdline:
                return int(pid)
    return None


def echo_ok(port: int) -> bool:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="SPINEXR")
    if not assoc.is_established:
        return False
    try:
        return bool(assoc.send_c_echo().Status == 0)
    finally:
        assoc.release()


def received_dimse(node: NodeProcess) -> float:
    """``spinexr_instances_received_total{source="dimse"}`` from /metrics."""
    url = f"http://127.0.0.1:{node.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith('spinexr_instances_received_total{source="dimse"}'):
                return float(line.split()[-1])
    return 0.0


def test_a_killed_listener_is_restarted_and_every_process_counts(tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    node = make_node(tmp_path, SPINEXR_STUDY__COMPLETION_SECONDS="3600").start()
    try:
        first = wait_for(lambda: listener_pid(node), 30, "the DICOM listener", node)
        os.kill(first, signal.SIGKILL)
        wait_for(
            lambda: (listener_pid(node) or first) != first and echo_ok(node.dicom_port),
            60,
            "a new DICOM listener",
            node,
        )
        assert f"DICOM listener (pid {first}) exited" in node.log()
        # Two studies over two associations at once: two association processes, one count.
        senders = [
            subprocess.Popen(
                [storescu, "-R", "-xv", "-aec", "SPINEXR", "127.0.0.1", str(node.dicom_port)]
                + [str(f) for f in write_study(tmp_path / f"study{i}", seed=10 * i)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(2)
        ]
        assert [p.wait(timeout=120) for p in senders] == [0, 0]
        assert received_dimse(node) == 4
    finally:
        assert node.stop() == 0, node.log()
