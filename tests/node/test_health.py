"""/healthz and /readyz against real parts: SQLite with migrations, the embedded broker, a
verified bundle, the spool, a live SCP as destination, Redis when scaled out."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from ingest_support import Stack, build_stack
from pipelinesupport import bundle_fields
from testsupport import free_port, require_tool

from spinexr.node.db.engine import make_engine
from spinexr.node.db.migrate import downgrade
from spinexr.node.dimse.scp import StoreSCP
from spinexr.node.http.app import create_app
from spinexr.node.http.health import Operations, readiness_body
from spinexr.pipeline.bundle import write_bundle


def small_bundle(folder: Path) -> Path:
    """A bundle that verify_bundle accepts (manifest, class list, hashes) with small files."""
    src = folder / "src"
    src.mkdir(parents=True)
    files = {}
    for rel, data in {
        "classifier/densenet121.pt": b"weights",
        "detector/config.py": b"# config\n",
        "detector/model.pth": b"checkpoint",
    }.items():
        path = src / rel.replace("/", "_")
        path.write_bytes(data)
        files[rel] = path
    write_bundle(folder / "bundle", bundle_fields(demo=False), files)
    return folder / "bundle"


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Stack]:
    """Another node's SCP standing in for the PACS (answers C-ECHO)."""
    peer = build_stack(tmp_path / "pacs", dicom={"ae_title": "PACS"})
    peer.scp = StoreSCP(peer.settings)
    peer.scp.start()
    yield peer
    peer.scp.stop()


def node(tmp_path: Path, *, bundle: bool = True, **sections) -> Stack:
    models = {"bundle": str(small_bundle(tmp_path / "models"))} if bundle else {}
    return build_stack(tmp_path, models=models, **sections)


def verified(ops: Operations) -> Operations:
    """Wait for the bundle verification (a child process) that ``Operations`` starts."""
    ops.checks["bundle"].begin().result(timeout=180)
    return ops


def dimse(name: str, port: int, ae: str = "PACS") -> dict:
    return {"name": name, "kind": "dimse", "ae_title": ae, "host": "127.0.0.1", "port": port}


def readyz(app) -> tuple[int, dict]:
    with TestClient(app) as client:
        response = client.get("/readyz")
    return response.status_code, response.json()


def test_ready_when_every_check_passes(tmp_path: Path, monkeypatch, pacs: Stack) -> None:
    monkeypatch.chdir(tmp_path)
    stack = node(tmp_path, destinations=[dimse("pacs", pacs.port)])
    app = create_app(stack.settings)
    try:
        with TestClient(app) as client:
            assert client.get("/healthz").json()["status"] == "ok"
        verified(app.state.operations)
        code, body = readyz(app)
        assert code == 200, body
        assert body["status"] == "ready"
        checks = body["checks"]
        assert set(checks) == {"database", "broker", "bundle", "spool", "destination pacs"}
        assert all(c["status"] == "ok" for c in checks.values()), checks
        assert "schema at head" in checks["database"]["detail"]
        assert "embedded SQLite broker" in checks["broker"]["detail"]
        assert "inference 0, export 0" in checks["broker"]["detail"]
        assert "test-bundle 0.0.1 verified" in checks["bundle"]["detail"]
        assert "MiB free" in checks["spool"]["detail"]
        assert checks["destination pacs"]["detail"].endswith("success")
    finally:
        app.state.operations.close()


def test_not_ready_names_the_failing_checks(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    stack = node(tmp_path, destinations=[dimse("gone", free_port())])
    downgrade(make_engine(stack.settings.database_url), "base")  # schema not migrated
    (stack.settings.models.bundle / "detector" / "model.pth").write_bytes(b"tampered")
    app = create_app(stack.settings)
    try:
        verified(app.state.operations)
        code, body = readyz(app)
        assert code == 503
        assert body["status"] == "not ready"
        assert sorted(body["failing"]) == ["bundle", "database", "destination gone"]
        checks = body["checks"]
        assert "spinexr-node db upgrade" in checks["database"]["detail"]
        assert "detector/model.pth" in checks["bundle"]["detail"]
        assert "SHA-256 mismatch" in checks["bundle"]["detail"]
        assert checks["destination gone"]["status"] == "fail"
        assert checks["broker"]["status"] == "ok" and checks["spool"]["status"] == "ok"
    finally:
        app.state.operations.close()


def test_spool_below_the_watermark_is_not_ready(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    stack = node(tmp_path, bundle=False, storage={"min_free_mb": 2**40})  # more than any disk has
    ops = Operations(stack.settings)
    try:
        spool = {r.name: r for r in ops.readiness()}["spool"]
        assert spool.status == "FAIL" and "below the watermark" in spool.detail
    finally:
        ops.close()


def test_bundle_verdict_is_cached_until_a_file_changes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    stack = node(tmp_path)
    ops = verified(Operations(stack.settings))
    try:
        first = {r.name: r for r in ops.readiness()}["bundle"]
        again = {r.name: r for r in ops.readiness()}["bundle"]
        assert first.status == again.status == "OK"
        assert again.seconds == first.seconds  # the same verification, not a new one
        config = stack.settings.models.bundle / "detector" / "config.py"
        config.write_text("# edited in place\n")
        verified(ops)  # the change starts a new verification
        changed = {r.name: r for r in ops.readiness()}["bundle"]
        assert changed.status == "FAIL" and "detector/config.py" in changed.detail
    finally:
        ops.close()


def test_destination_answers_are_reused_for_a_while(
    tmp_path: Path, monkeypatch, pacs: Stack
) -> None:
    monkeypatch.chdir(tmp_path)
    stack = node(tmp_path, bundle=False, destinations=[dimse("pacs", pacs.port)])
    ops = Operations(stack.settings)
    try:
        name = "destination pacs"
        assert {r.name: r for r in ops.readiness()}[name].status == "OK"
        assert pacs.scp is not None
        pacs.scp.stop()
        # Within the TTL the PACS is not asked again: still OK although it is gone.
        assert {r.name: r for r in ops.readiness()}[name].status == "OK"
        ops.checks[name].ttl = 0.0
        assert {r.name: r for r in ops.readiness()}[name].status == "FAIL"
    finally:
        ops.close()


def test_a_peer_that_never_answers_does_not_hang_readyz(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections in the kernel, never says a word
    try:
        port = silent.getsockname()[1]
        stack = node(tmp_path, bundle=False, destinations=[dimse("silent", port)])
        ops = Operations(stack.settings, timeout=1.0)
        try:
            start = time.monotonic()
            result = {r.name: r for r in ops.readiness()}["destination silent"]
            elapsed = time.monotonic() - start
            assert result.status == "FAIL"
            assert elapsed < 10, elapsed  # bounded by the timeout, not by the peer
        finally:
            ops.close()
    finally:
        silent.close()


def test_scaled_out_broker_unreachable_fails_without_leaking_the_password(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"redis://:pw-s3cret@127.0.0.1:{free_port()}/0"
    stack = node(tmp_path, bundle=False, queue={"broker_url": url})
    ops = Operations(stack.settings, timeout=1.0)
    try:
        code, body = readiness_body(ops.readiness())
        assert code == 503 and body["failing"] == ["broker"]
        # Scaled out, the inference workers hold the bundle: none here is only a warning.
        assert body["checks"]["bundle"]["status"] == "warn"
        detail = body["checks"]["broker"]["detail"]
        assert "not reachable" in detail and "pw-s3cret" not in detail
    finally:
        ops.close()


@pytest.mark.integration
def test_scaled_out_broker_reachable(tmp_path: Path, monkeypatch) -> None:
    exe = require_tool("redis-server")
    monkeypatch.chdir(tmp_path)
    port = free_port()
    redis = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        stack = node(tmp_path, bundle=False, queue={"broker_url": f"redis://127.0.0.1:{port}/0"})
        ops = Operations(stack.settings)
        try:
            deadline = time.monotonic() + 10
            while True:
                broker = {r.name: r for r in ops.readiness()}["broker"]
                if broker.status == "OK" or time.monotonic() > deadline:
                    break
                ops.checks["broker"].ttl = 0.0
                time.sleep(0.2)
            assert broker.status == "OK", broker.detail
            assert f"redis://127.0.0.1:{port}" in broker.detail
        finally:
            ops.close()
    finally:
        redis.terminate()
        redis.wait(timeout=10)
