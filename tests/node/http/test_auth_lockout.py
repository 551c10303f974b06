"""Failed authentications lock the client's address out (429 + Retry-After), and only it.

The node's app is served by uvicorn on a free loopback port; clients connect from
127.0.0.1 (the attacker) and 127.0.0.2 (the admin elsewhere), two real addresses.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest
import uvicorn
from ingest_support import build_stack
from testsupport import free_port

from spinexr.node.http.app import create_app
from spinexr.node.http.ratelimit import AuthFailureLimiter, client_key

TOKEN = "lockout-token-0123456789"
FAILURES = 10
LOCKOUT = 2.0
ATTACKER = "127.0.0.1"
OTHER = "127.0.0.2"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@pytest.fixture
def port(tmp_path, monkeypatch) -> Iterator[int]:
    monkeypatch.chdir(tmp_path)
    stack = build_stack(
        tmp_path,
        http={
            "api_token": TOKEN,
            "auth_max_failures": FAILURES,
            "auth_failure_window_seconds": 60,
            "auth_lockout_seconds": LOCKOUT,
        },
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
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def call(
    port: int,
    method: str,
    path: str,
    *,
    source: str = ATTACKER,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def login(port: int, token: str, source: str = ATTACKER) -> Answer:
    form = urlencode({"token": token, "next": "/admin/"}).encode()
    ctype = {"Content-Type": "application/x-www-form-urlencoded"}
    return call(port, "POST", "/admin/login", source=source, body=form, headers=ctype)


def api(port: int, token: str, source: str = ATTACKER) -> Answer:
    return call(
        port, "GET", "/api/v1/studies", source=source, headers={"Authorization": f"Bearer {token}"}
    )


def stow(port: int, token: str, source: str = ATTACKER) -> Answer:
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=B',
    }
    return call(
        port, "POST", "/dicomweb/studies", source=source, body=b"--B--\r\n", headers=headers
    )


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "spinexr.node.audit"]


def test_wrong_logins_lock_out_the_address_until_the_lockout_expires(port, caplog) -> None:
    caplog.set_level(logging.INFO)
    answers = [login(port, f"wrong-{i}").status for i in range(30)]
    assert answers == [401] * FAILURES + [429] * (30 - FAILURES)

    # The right token from the locked-out address is refused too, everywhere it would count.
    for refused in (login(port, TOKEN), api(port, TOKEN), stow(port, TOKEN)):
        assert refused.status == 429, refused
        assert 1 <= int(refused.headers["retry-after"]) <= LOCKOUT
    assert call(port, "GET", "/healthz").status == 200

    # Another address is unaffected: the admin gets in from there.
    assert login(port, TOKEN, source=OTHER).status == 303
    assert api(port, TOKEN, source=OTHER).status == 200

    # One audit line for the lockout, naming the address, never a token.
    lines = audit_lines(caplog)
    assert len(lines) == 1, lines
    assert ATTACKER in lines[0] and f"after {FAILURES} failed" in lines[0]
    assert "POST /admin/login" in lines[0]
    assert not any("wrong-" in r.getMessage() or TOKEN in r.getMessage() for r in caplog.records)

    time.sleep(LOCKOUT + 0.2)
    ok = login(port, TOKEN)
    assert ok.status == 303 and "spinexr_admin=" in ok.headers["set-cookie"]


def test_wrong_bearer_tokens_on_the_api_and_stow_count_as_failures(port, caplog) -> None:
    caplog.set_level(logging.INFO)
    for i in range(FAILURES // 2):
        assert api(port, f"wrong-{i}").status == 401
        assert stow(port, f"wrong-{i}").status == 401
    assert stow(port, TOKEN).status == 429
    assert api(port, TOKEN).status == 429
    assert login(port, TOKEN).status == 429
    assert api(port, TOKEN, source=OTHER).status == 200
    assert len(audit_lines(caplog)) == 1


def test_failures_outside_the_window_do_not_add_up() -> None:
    now = [0.0]
    limiter = AuthFailureLimiter(3, window=10, lockout=5, clock=lambda: now[0])
    for t in (0.0, 6.0, 12.0, 18.0):  # never three within 10 s
        now[0] = t
        assert limiter.failed("10.0.0.1") is None
    assert limiter.retry_after("10.0.0.1") is None
    now[0] = 19.0
    assert limiter.failed("10.0.0.1") == 3
    assert limiter.retry_after("10.0.0.1") == pytest.approx(5)
    assert limiter.retry_after("10.0.0.2") is None
    now[0] = 24.0
    assert limiter.retry_after("10.0.0.1") is None
    # A new lockout needs the full count again.
    assert limiter.failed("10.0.0.1") is None


def test_ipv6_addresses_are_counted_by_their_64_network() -> None:
    def key(host: str) -> str:
        return client_key({"type": "http", "client": (host, 1234)})

    assert key("2001:db8:1:2::5") == key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert key("2001:db8:1:3::5") != key("2001:db8:1:2::5")
    assert key("::ffff:10.0.0.7") == "10.0.0.7"
    assert key("10.0.0.7") == "10.0.0.7"


def test_the_limiter_forgets_quiet_addresses_beyond_its_bound() -> None:
    now = [0.0]
    limiter = AuthFailureLimiter(2, window=10, lockout=100, clock=lambda: now[0], max_clients=3)
    limiter.failed("locked")
    limiter.failed("locked")
    now[0] = 20.0
    for i in range(10):
        limiter.failed(f"10.0.0.{i}")
    assert limiter.retry_after("locked") == pytest.approx(80)
    assert len(limiter) == 3
