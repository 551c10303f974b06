"""The acceptance path on a live `spinexr-node serve`: dcmtk peers, timer, CLI inspection."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from ingest_support import write_study
from testsupport import EXE, make_node, require_tool, wait_for

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
    storescp = require_tool("storescp")
    from testsupport import free_port

    port = free_port()
    out = tmp_path / "received"
    out.mkdir()
    peer = subprocess.Popen(
        [storescp, "-aet", "PACS", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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
