"""Fixtures: an in-process ingest stack, with or without a live SCP (its own processes) on
loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_support import Stack, build_stack

from spinexr.node.dimse.scp import StoreSCP


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stack:
    monkeypatch.chdir(tmp_path)
    return build_stack(tmp_path)


@pytest.fixture
def scp_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    monkeypatch.chdir(tmp_path)
    s = build_stack(tmp_path)
    s.scp = StoreSCP(s.settings)
    s.scp.start()
    yield s
    s.scp.stop()
