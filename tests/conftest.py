"""Shared fixtures: real servers on loopback (PostgreSQL, ...) and tool look-ups.

With ``SPINEXR_REQUIRE_TOOLS=1`` (set by ``make test`` and CI) a missing external tool is a
failure, not a skip, so a green run really exercised the real peers.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from postgres_support import PostgresServer


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """Start a throw-away PostgreSQL server on 127.0.0.1 and yield its URL."""
    server = PostgresServer()
    try:
        yield server.start().url
    finally:
        server.remove()
