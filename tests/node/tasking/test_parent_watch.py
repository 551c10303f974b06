"""A worker started by ``serve`` stops when ``serve`` is killed (no orphaned workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from spinexr.node.tasking.app import PARENT_ENV

CHILD = (
    "import time; from spinexr.node.tasking.app import watch_parent; "
    "watch_parent(0.1); time.sleep(60)"
)
PARENT = (
    "import os, subprocess, sys, time; "
    f"p = subprocess.Popen([sys.executable, '-c', {CHILD!r}], "
    f"env={{**os.environ, {PARENT_ENV!r}: str(os.getpid())}}); "
    "print(p.pid, flush=True); time.sleep(60)"
)


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(")")[-1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_worker_stops_when_its_serve_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    time.sleep(1.0)
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the worker outlived its serve"


def test_a_worker_not_started_by_serve_is_not_watched(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv(PARENT_ENV, raising=False)
    from spinexr.node.tasking.app import watch_parent

    watch_parent()  # no thread, no exception
