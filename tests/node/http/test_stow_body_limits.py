"""STOW-RS request bodies: size limit (413) and read timeout (408), over a raw socket.

The node's app is served by uvicorn on a free loopback port; the client is a plain socket,
so the test sees exactly when the server answers and when it closes the connection.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from ingest_support import Stack, build_stack, phantom_bytes
from sqlalchemy import func
from sqlalchemy import select as sql_select
from testsupport import free_port

from spinexr.node.db.models import Instance
from spinexr.node.http.app import create_app

TOKEN = "body-limit-token"
LIMIT = 2**20
TIMEOUT = 1.0
BOUNDARY = "BoUnDaRy"
PHI = b"DOE^JANE"


@pytest.fixture
def served(tmp_path, monkeypatch) -> Iterator[tuple[Stack, int]]:
    monkeypatch.chdir(tmp_path)
    stack = build_stack(
        tmp_path,
        http={"api_token": TOKEN, "max_stow_bytes": LIMIT, "body_timeout_seconds": TIMEOUT},
        dicom={"max_dataset_bytes": LIMIT},
    )
    port = free_port()
    config = uvicorn.Config(
        create_app(stack.settings, stack.ingest),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield stack, port
    server.should_exit = True
    thread.join(timeout=10)


def head(port: int, *, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        "POST /dicomweb/studies HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\n"
        f'Content-Type: multipart/related; type="application/dicom"; boundary={BOUNDARY}\r\n'
        f"{framing}\r\n\r\n"
    ).encode()


def part_head() -> bytes:
    return f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Read the answer; return it and whether the server closed the connection in time."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data, False
    except ConnectionResetError:
        return data, True
    return data, True


def count(stack: Stack) -> int:
    with stack.sessions() as s:
        return int(s.scalar(sql_select(func.count()).select_from(Instance)) or 0)


def test_declared_oversized_body_is_413_at_once_and_closed(served) -> None:
    stack, port = served
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(head(port, length=2**31) + part_head() + PHI)
        answer, closed = read_until_closed(sock, timeout=5)
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"connection: close" in answer.lower()
    assert b"larger than 1048576 bytes" in answer
    assert closed and elapsed < 2, elapsed
    assert count(stack) == 0


def test_declared_oversized_body_is_413_before_any_body_byte(served) -> None:
    _, port = served
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head(port, length=LIMIT + 1))
        answer, closed = read_until_closed(sock, timeout=5)
    assert answer.startswith(b"HTTP/1.1 413 ") and closed, answer[:200]


def test_stalled_body_is_408_after_the_timeout_and_closed(served, caplog) -> None:
    stack, port = served
    caplog.set_level(logging.WARNING)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(head(port, length=10_000) + part_head() + PHI)
        answer, closed = read_until_closed(sock, timeout=TIMEOUT + 5)
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"connection: close" in answer.lower()
    assert closed and TIMEOUT * 0.9 <= elapsed < TIMEOUT + 3, elapsed
    lines = [r.getMessage() for r in caplog.records if "stalled" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "POST /dicomweb/studies from 127.0.0.1" in lines[0]
    assert all(PHI.decode() not in r.getMessage() for r in caplog.records)
    assert count(stack) == 0 and list(stack.spool.tmp.iterdir()) == []


def test_chunked_body_growing_past_the_limit_is_413_while_streaming(served) -> None:
    stack, port = served
    data, _ = phantom_bytes(7)
    chunk = b"\0" * 65536
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        first = part_head() + data
        sock.sendall(head(port, length=None) + f"{len(first):x}\r\n".encode() + first + b"\r\n")
        # Keep streaming one part far past the limit until the server answers.
        while sent < 32 * LIMIT:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        answer, closed = read_until_closed(sock, timeout=5)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert closed
    # Answered while streaming: the client was still sending (socket buffers on both sides
    # hold a few MiB of what it sent; the server read no more than the limit and a chunk).
    assert sent < 32 * LIMIT, sent
    assert count(stack) == 0 and list(stack.spool.tmp.iterdir()) == []


def test_a_body_within_the_limits_is_stored(served) -> None:
    stack, port = served
    data, _ = phantom_bytes(8)
    body = part_head() + data + f"\r\n--{BOUNDARY}--\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head(port, length=len(body)))
        time.sleep(TIMEOUT / 2)  # slower than the timeout in total, never idle that long
        sock.sendall(body[: len(body) // 2])
        time.sleep(TIMEOUT / 2)
        sock.sendall(body[len(body) // 2 :])
        sock.settimeout(10)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert count(stack) == 1
