"""A node whose bundle is still being prepared receives at once and analyses when it is ready.

This is what ``serve --demo-bundle`` does on a fresh machine (`spinexr.training.bundles.
prepare`): the preparing process keeps a preparation file beside the bundle folder. Here a
``sleep`` stands in for that process and the test plays its part: the bundle folder does not
exist when the node starts; a study sent meanwhile is stored, its job waits in the queue
(its timeline says why, the admin API says what is being prepared, nothing reaches the PACS
and no attempt is spent); then the bundle is written and its radiograph part marked ready,
and the study is analysed and delivered without anyone touching the node.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
import requests
from ingest_support import write_study
from pipelinesupport import build_tiny_bundle
from testsupport import make_node, start_storescp, storescu, wait_for

from spinexr.pipeline.preparation import Preparation, update_preparation, write_preparation

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "staged-start-token"


def test_jobs_wait_for_models_being_prepared_then_run(tmp_path: Path) -> None:
    built = build_tiny_bundle(tmp_path / "built", threshold=0.0)
    bundle = tmp_path / "demo-bundle"  # not written yet
    preparer = subprocess.Popen(["sleep", "600"])
    identity = f"{built.manifest.name}@{built.manifest.version}"
    write_preparation(
        bundle,
        Preparation(pid=preparer.pid, identity=identity, step=2, steps=8, text="training"),
    )
    pacs_dir = tmp_path / "pacs"
    pacs, pacs_port = start_storescp(pacs_dir)
    node = make_node(
        tmp_path,
        SPINEXR_STUDY__COMPLETION_SECONDS="1",
        SPINEXR_MODELS__BUNDLE=str(bundle),
        SPINEXR_MODELS__DEVICE="cpu",
        SPINEXR_HTTP__API_TOKEN=TOKEN,
        SPINEXR_DESTINATIONS=json.dumps(
            [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}]
        ),
    )
    try:
        node.start()
        files = write_study(tmp_path / "study")
        storescu(node.dicom_port, files, "-R", "-xv")
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

        def study() -> dict:
            return json.loads(node.cli("studies", "show", uid, "--json"))

        def waiting() -> dict | None:
            data = study()
            said = [e["detail"] for e in data["timeline"] if e["detail"]]
            return data if "waiting: radiograph models being prepared" in said else None

        data = wait_for(waiting, 120, "the job waiting for its models", node)
        assert [j["state"] for j in data["jobs"]] == ["queued"]
        answer = requests.get(
            f"http://127.0.0.1:{node.http_port}/api/v1/bundle",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        said = answer.json()
        assert said["loaded"] is False and said["error"] is None
        assert said["preparing"]["step"] == 2
        assert said["preparing"]["waiting"] == ["radiograph analyses", "CT analyses"]

        # The preparation writes the bundle and marks its radiograph part ready.
        shutil.copytree(built.directory, bundle)
        update_preparation(bundle, step=7, text="CT models", ready=["radiograph"])

        def delivered() -> dict | None:
            data = study()
            states = [j["state"] for j in data["jobs"]]
            return data if states and states[-1] in ("verified", "exported", "dead") else None

        data = wait_for(delivered, 240, "the study analysed and exported", node)
    finally:
        node.stop()
        pacs.terminate()
        preparer.kill()
        preparer.wait()
    (job,) = data["jobs"]
    assert job["state"] in ("verified", "exported"), data
    said = [e["detail"] for e in data["timeline"] if e["detail"]]
    attempts = [d for d in said if d.startswith("attempt ")]
    assert len(attempts) == 1 and attempts[0].startswith("attempt 1 on"), said  # waiting: none
    assert said.count("waiting: radiograph models being prepared") == 1, said
    received = [pydicom.dcmread(p, stop_before_pixels=True) for p in pacs_dir.iterdir()]
    assert "SR" in {ds.Modality for ds in received}
    assert all(str(ds.StudyInstanceUID) == uid for ds in received)
