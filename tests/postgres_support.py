"""A throw-away PostgreSQL server on 127.0.0.1 that a test can stop and start again."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from testsupport import free_port, tools_required


def pg_bindir() -> Path | None:
    """The newest PostgreSQL server binaries installed, or None."""
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / "initdb").exists():
            return base
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresServer:
    """``initdb`` + ``pg_ctl`` in a temporary folder, trust authentication, one port.

    Not under pytest's tmp folder: its parents are private to root, and the server runs as
    the postgres user (PostgreSQL refuses to run as root).
    """

    def __init__(self) -> None:
        bindir = pg_bindir()
        if bindir is None:
            msg = "PostgreSQL server binaries not installed (scripts/system-deps.sh installs them)"
            if tools_required():
                pytest.fail(msg)
            pytest.skip(msg)
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="spinexr-pg-"))
        self.data, self.sock, self.log = (
            self.root / "data",
            self.root / "sock",
            self.root / "pg.log",
        )
        self.sock.mkdir()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sock, "postgres")
            os.chmod(self.root, 0o700)
        self.port = free_port()
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        if self.as_user:
            self.log.touch()
            shutil.chown(self.log, "postgres")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, tool: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*self.as_user, str(self.bindir / tool), *args], check=True, capture_output=True
        )

    def start(self) -> PostgresServer:
        """Start the server and wait until it accepts connections."""
        options = f"-h 127.0.0.1 -p {self.port} -k {self.sock} -F"
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "start", "-o", options)
        deadline = time.monotonic() + 20
        while not self.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: {self.log.read_text()}")
            time.sleep(0.2)
        return self

    def ready(self) -> bool:
        """Whether ``pg_isready`` says the server accepts connections."""
        probe = [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)]
        return subprocess.run(probe, capture_output=True).returncode == 0

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: sessions are disconnected; ``immediate``: no shutdown)."""
        subprocess.run(
            [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "stop"],
            capture_output=True,
        )

    def remove(self) -> None:
        """Stop the server and delete its files."""
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def fresh_database(postgres_url: str, name: str) -> str:
    """Create database ``name`` anew on the server of ``postgres_url``; return its URL."""
    from sqlalchemy import create_engine, text

    admin = create_engine(
        postgres_url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"
