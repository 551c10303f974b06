"""storescu → `serve` → worker → SR + GSPS at a storescp PACS (and read back from Orthanc)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pydicom
import pytest
from ingest_support import write_study
from pipelinesupport import build_tiny_bundle
from postgres_support import fresh_database
from testsupport import (
    EXE,
    free_port,
    make_node,
    make_orthanc,
    start_redis,
    start_storescp,
    storescu,
    wait_for,
)

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


def test_study_flows_from_storescu_to_the_pacs_with_a_complete_timeline(tmp_path: Path) -> None:
    bundle = build_tiny_bundle(tmp_path / "bundle", threshold=0.0)
    pacs_dir = tmp_path / "pacs"
    pacs, pacs_port = start_storescp(pacs_dir)
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
        storescu(node.dicom_port, files, "-R", "-xv", "-aet", "MODALITY")
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

        def finished():
            data = json.loads(node.cli("studies", "show", uid, "--json"))
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


def test_scaled_out_with_redis_postgresql_and_a_separate_worker(
    tmp_path: Path, postgres_url: str
) -> None:
    db_url = fresh_database(postgres_url, "spinexr_e2e")
    redis_port = free_port()
    redis_proc = start_redis(redis_port)
    bundle = build_tiny_bundle(tmp_path / "bundle", threshold=0.0)
    pacs_dir = tmp_path / "pacs"
    pacs, pacs_port = start_storescp(pacs_dir)
    node = make_node(
        tmp_path,
        SPINEXR_STUDY__COMPLETION_SECONDS="1",
        SPINEXR_QUEUE__BROKER_URL=f"redis://127.0.0.1:{redis_port}/0",
        SPINEXR_DATABASE__URL=db_url,
        SPINEXR_DESTINATIONS=json.dumps(
            [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}]
        ),
    )
    worker_env = dict(
        node.env, SPINEXR_MODELS__BUNDLE=str(bundle.directory), SPINEXR_MODELS__DEVICE="cpu"
    )
    worker = None
    try:
        node.start()  # serve: ingest + export only (it has no bundle)
        worker_log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
        worker = subprocess.Popen(
            [str(EXE), "worker", "--queues", "inference"],
            env=worker_env,
            cwd=tmp_path,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )
        files = write_study(tmp_path / "study")
        storescu(node.dicom_port, files, "-R", "-xv")
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

        def exported():
            data = json.loads(node.cli("studies", "show", uid, "--json"))
            states = [j["state"] for j in data["jobs"]]
            return data if states and states[-1] in ("exported", "dead") else None

        data = wait_for(exported, 240, "export", node)
        assert data["jobs"][-1]["state"] == "exported"
        analysing = [e for e in data["timeline"] if e["to_state"] == "analyzing"]
        # The separate inference worker did the analysis (serve has no bundle).
        assert analysing and analysing[0]["detail"].endswith(f":{worker.pid}")
        assert len(list(pacs_dir.iterdir())) == 3  # SR + 2 GSPS
        status = json.loads(node.cli("status", "--json"))
        assert status["jobs"]["exported"] == 1
        assert status["queue_depths"]["inference"] == 0
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        node.stop()
        pacs.terminate()
        redis_proc.terminate()


def test_job_survives_a_killed_worker(tmp_path: Path) -> None:
    import os
    import signal

    from spinexr.training.phantoms import make_phantom_image, write

    bundle = build_tiny_bundle(tmp_path / "bundle", threshold=0.0)
    node = make_node(
        tmp_path,
        SPINEXR_STUDY__COMPLETION_SECONDS="1",
        SPINEXR_QUEUE__LEASE_SECONDS="10",
        SPINEXR_MODELS__BUNDLE=str(bundle.directory),
        SPINEXR_MODELS__DEVICE="cpu",
    )
    node.start()
    try:
        # Full-size images so that the analysis lasts long enough to be interrupted.
        folder = tmp_path / "study"
        folder.mkdir()
        uid = "1.2.826.0.1.3680043.8.498.777"
        for i in range(4):
            ds, _ = make_phantom_image(
                40 + i, view="AP" if i % 2 else "LAT", size="full", study_uid=uid
            )
            write(ds, folder / f"{i}.dcm")
        storescu(node.dicom_port, sorted(folder.iterdir()), timeout=120)

        def analysing_pid():
            data = json.loads(node.cli("studies", "show", uid, "--json"))
            for e in data["timeline"]:
                if e["to_state"] == "analyzing":
                    return int(e["detail"].rsplit(":", 1)[1])
            return None

        pid = wait_for(analysing_pid, 60, "analysis start", node)
        os.kill(pid, signal.SIGKILL)  # the worker dies in the middle of the analysis

        def done():
            data = json.loads(node.cli("studies", "show", uid, "--json"))
            return data if data["jobs"][-1]["state"] in ("exported", "dead") else None

        data = wait_for(done, 180, "recovery", node)
        moves = [e["to_state"] for e in data["timeline"] if e["to_state"]]
        assert data["jobs"][-1]["state"] == "exported", moves
        assert moves.count("analyzing") == 2, moves
        assert any("worker lost" in (e["detail"] or "") for e in data["timeline"])
        assert "worker exited with code -9; restarting" in node.log()
    finally:
        assert node.stop() == 0, node.log()[-3000:]
