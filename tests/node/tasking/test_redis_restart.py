"""Redis restarted mid-run, scaled-out mode (issue 19, part 3).

``serve`` (ingest, export, reconciler) and a separate inference worker share PostgreSQL and
a Redis without persistence. Redis is killed while studies are queued and analysed, and a
new, empty Redis starts on the same port: every message it held is gone. The database is
the source of truth: the reconciler re-publishes what the lost messages carried, a worker
claims a job only once, and the PACS receives every result exactly once.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
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
    start_redis,
    start_storescp,
    storescu,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BEFORE, AFTER = 3, 2
"""Studies sent before Redis is killed, and after the new one starts."""


def test_redis_restarted_mid_run_loses_no_job_and_analyses_none_twice(
    tmp_path: Path, postgres_url: str
) -> None:
    redis_port = free_port()
    redis = start_redis(redis_port)
    bundle = build_tiny_bundle(tmp_path / "bundle", threshold=0.0)
    pacs_dir = tmp_path / "pacs"
    pacs, pacs_port = start_storescp(pacs_dir)
    node = make_node(
        tmp_path,
        SPINEXR_STUDY__COMPLETION_SECONDS="1",
        SPINEXR_QUEUE__LEASE_SECONDS="10",  # the reconciler looks every 2 s
        SPINEXR_QUEUE__BROKER_URL=f"redis://127.0.0.1:{redis_port}/0",
        SPINEXR_DATABASE__URL=fresh_database(postgres_url, "spinexr_redis_restart"),
        SPINEXR_DESTINATIONS=json.dumps(
            [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}]
        ),
    )
    worker_env = dict(
        node.env, SPINEXR_MODELS__BUNDLE=str(bundle.directory), SPINEXR_MODELS__DEVICE="cpu"
    )
    worker = None
    uids: list[str] = []
    try:
        node.start()  # serve: ingest, export and the reconciler (it has no bundle)
        worker_log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
        worker = subprocess.Popen(
            [str(EXE), "worker", "--queues", "inference"],
            env=worker_env,
            cwd=tmp_path,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )

        def show(uid: str) -> dict:
            return json.loads(node.cli("studies", "show", uid, "--json"))

        def state(uid: str) -> str | None:
            jobs = show(uid)["jobs"]
            return jobs[-1]["state"] if jobs else None

        def send(n: int) -> None:
            files = write_study(tmp_path / f"study{n}", seed=10 * n)
            storescu(node.dicom_port, files, "-xv")
            uids.append(str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID))

        send(0)
        wait_for(lambda: state(uids[0]) == "exported", 120, "first study exported", node)
        worker.send_signal(signal.SIGSTOP)  # its consumer takes nothing for a while
        for n in range(1, BEFORE):
            send(n)
        wait_for(lambda: all(state(u) == "queued" for u in uids[1:]), 60, "jobs queued", node)
        redis.kill()  # the messages of the queued jobs are lost with it
        redis.wait(timeout=10)
        redis = start_redis(redis_port)  # a new, empty Redis on the same port
        worker.send_signal(signal.SIGCONT)  # the worker and serve reconnect
        for n in range(BEFORE, BEFORE + AFTER):
            send(n)

        def all_exported() -> list[dict] | None:
            studies = [show(uid) for uid in uids]
            ends = [s["jobs"][-1]["state"] if s["jobs"] else None for s in studies]
            return studies if all(e in ("exported", "dead") for e in ends) else None

        studies = wait_for(all_exported, 300, "every study exported", node)
        for study in studies:
            moves = [e["to_state"] for e in study["timeline"] if e["to_state"]]
            assert study["jobs"][-1]["state"] == "exported", moves
            assert moves.count("analyzing") == 1, moves  # none analysed twice
        received = Counter(
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in pacs_dir.iterdir()
        )
        assert len(received) == 3 * len(uids)  # SR + 2 GSPS per study
        assert set(received.values()) == {1}  # each exactly once
        assert "reconciler: " in node.log()  # the lost messages were published again
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        node.stop()
        pacs.terminate()
        redis.terminate()
