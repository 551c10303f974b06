"""Helpers shared by tests (importable as ``testsupport``; ``tests/`` is on pytest's path)."""

from __future__ import annotations

import os
import shutil
import socket

import pytest


def tools_required() -> bool:
    return os.environ.get("SPINEXR_REQUIRE_TOOLS") == "1"


def require_tool(name: str) -> str:
    """Return the path of an executable, or skip (fail when tools are required)."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (scripts/system-deps.sh installs it)"
        if tools_required():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
