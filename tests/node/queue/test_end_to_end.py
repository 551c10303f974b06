"""storescu → `serve` → worker → SR + GSPS at a storescp PACS (and read back from Orthanc)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from ingest_support import write_study
from pipelinesupport import build_tiny_bundle
from testsupport import EXE, free_port, make_node, make_orthanc, require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HAPPY = [
    "received",
    "complete",
    "queued",
    "analyzing",
    "built",
    "exporting",
    "exported",
    "verified",
]


def cli(node, *args: str) -> str:
    proc = subprocess.run(
        [str(EXE), *args],
        env=node.env,
        cwd=node.data_dir.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def wait_for(pred, timeout: float, what: str, node=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached in {timeout} s\n{node.log()[-6000:] if node else ''}")


def test_study_flows_from_storescu_to_the_pacs_with_a_complete_timeline(tmp_path: Path) -> None:
    storescu, storescp = require_tool("storescu"), require_tool("storescp")
    bundle = build_tiny_bundle(tmp_path / "bundle", threshold=0.0)
    pacs_port, pacs_dir = free_port(), tmp_path / "pacs"
    pacs_dir.mkdir()
    pacs = subprocess.Popen(
        [storescp, "-aet", "PACS", "-od", str(pacs_dir), str(pacs_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    orthanc = make_orthanc(tmp_path).start()
    destinations = [
        {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port},
        {
            "name": "orthanc",
            "ae_title": "ORTHANC",
            "host": "127.0.0.1",
            "port": orthanc.dicom_port,
            "verify": True,
        },
    ]
    node = make_node(
        tmp_path,
        SPINEXR_STUDY__COMPLETION_SECONDS="1",
        SPINEXR_MODELS__BUNDLE=str(bundle.directory),
        SPINEXR_MODELS__DEVICE="cpu",
        SPINEXR_DESTINATIONS=json.dumps(destinations),
    )
    node.start()
    try:
        files = write_study(tmp_path / "study")
        sent = subprocess.run(
            [
                storescu,
                "-R",
                "-xv",
                "-aet",
                "MODALITY",
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
        assert sent.returncode == 0, sent.stdout + sent.stderr
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

        def finished():
            data = json.loads(cli(node, "studies", "show", uid, "--json"))
            states = [j["state"] for j in data["jobs"]]
            return data if states and states[-1] in ("verified", "dead", "exported") else None

        data = wait_for(finished, 240, "job end state", node)
        assert data["jobs"][-1]["state"] == "verified", data
        moves = [e["to_state"] for e in data["timeline"] if e["to_state"]]
        assert moves == HAPPY, moves
        received = [pydicom.dcmread(p, stop_before_pixels=True) for p in pacs_dir.iterdir()]
        assert sorted(ds.Modality for ds in received) == ["PR", "PR", "SR"]
        assert all(ds.StudyInstanceUID == uid for ds in received)
    finally:
        code = node.stop()
        pacs.terminate()
        orthanc.stop()
    assert code == 0, node.log()[-4000:]
