"""PostgreSQL stopped mid-run, scaled-out mode (issue 19, part 3).

While the database is down the node acknowledges nothing: C-STORE answers a failure status
(or the association is not accepted), STOW-RS answers 503, ``/readyz`` says the database
is the problem. When it comes back the same processes store again, with no restart.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_support import build_stack, phantom_bytes
from live_node import LiveNode
from postgres_support import PostgresServer
from pydicom.uid import generate_uid

pytestmark = pytest.mark.integration

TOKEN = "db-outage-token"


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.remove()


def wait_for(predicate, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.5)


def database_ok(node: LiveNode) -> bool:
    """Whether ``/readyz`` finds the database (this test's node has no bundle or worker)."""
    return node.readyz().json()["checks"]["database"]["status"] == "ok"


def test_postgresql_stopped_acknowledges_nothing_and_recovers_without_restart(
    postgres: PostgresServer, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    stack = build_stack(tmp_path, database={"url": postgres.url}, http={"api_token": TOKEN})
    images = [phantom_bytes(s, sop_class="CR", study_uid=generate_uid()) for s in range(5)]
    with LiveNode(stack, TOKEN) as node:
        assert node.c_store(images[0][1]) == 0x0000
        assert database_ok(node)
        kept = node.stored()

        postgres.stop()
        status = node.c_store(images[1][1])
        assert status is None or 0xA700 <= status <= 0xA7FF, hex(status)  # never 0x0000
        r = node.stow(images[2][0])
        assert r.status_code == 503 and r.headers["Retry-After"]
        wait_for(lambda: not database_ok(node), 10)  # its answer is reused for 1 s
        ready = node.readyz()
        assert ready.status_code == 503 and "database" in ready.json()["failing"]
        assert ready.json()["checks"]["database"]["detail"].startswith("postgresql unreachable: ")

        postgres.start()
        wait_for(lambda: database_ok(node))
        assert node.c_store(images[1][1]) == 0x0000
        assert node.stow(images[2][0]).status_code == 200
        now = node.stored()
        assert len(now) == 3 and all(now[k] == v for k, v in kept.items())
