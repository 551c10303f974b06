"""A live ``spinexr-node serve`` for a campaign, and what is checked on it afterwards.

The node runs on loopback with a fresh data folder and its own temporary folder (``TMPDIR``),
so every file it writes is either in the data folder or in that temporary folder. Studies
complete after a few seconds: the study assembler and its rules run on the fuzzed headers
the node accepted (no model bundle is loaded, so nothing is analysed: the decode target runs
the pipeline's decode path on every input instead, under a memory limit).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

EXE = Path(sys.executable).parent / "spinexr-node"
PROBLEM_LINES = re.compile(
    r"Traceback|internal error|association process failed|association process \d+ ended with"
    r"|Exception in|CRITICAL|Segmentation fault"
)
"""Node log lines that mean a crash or an unhandled exception."""
HANDLED_BY_PYNETDICOM = re.compile(
    r'pynetdicom/dul\.py", line \d+, in _read_pdu_data'
    r'|pynetdicom/fsm\.py", line \d+, in do_action'
    r'|pynetdicom/utils\.py", line \d+, in decode_bytes'
    r'|pynetdicom/dimse\.py", line \d+, in receive_primitive'
)
"""First frame of a traceback pynetdicom logs itself (of the outermost exception of a chain:
`_handled_by_pynetdicom`): a broken PDU its reader handles (it
aborts or closes the association), or an action of its state machine that failed (logged,
then re-raised into the association thread, which the node's thread hook turns into an
A-ABORT with a one-line warning), a non-ASCII AE title it decodes with its fallback
codecs, or a DIMSE message it cannot decode (it aborts). Not findings; an "Exception in
thread" line would be."""
DB_FILES = re.compile(r"^(spinexr\.db|broker\.sqlite)(-wal|-shm|-journal)?$")


def free_port() -> int:
    """Return a free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vm_hwm(pid: int) -> int:
    """Peak resident set size of a process (``VmHWM``) in bytes, 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Child processes of ``pid``, recursively (from ``/proc/<pid>/task/*/children``)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                kids = [int(p) for p in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


def tree(root: Path) -> set[str]:
    """Every file under ``root`` (relative paths)."""
    return (
        {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        if root.exists()
        else set()
    )


@dataclass
class LiveNode:
    """A ``serve`` process and the facts a campaign checks about it.

    Parameters
    ----------
    root : Path
        Folder for its data, temporary files and log.
    token : str
        STOW-RS bearer token.
    """

    root: Path
    token: str = "fuzz-token"
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    peaks: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _sampler: threading.Thread | None = None

    def __post_init__(self) -> None:
        # serve runs with the root as its working folder: a relative root would put its data
        # one level deeper than the checks look (every stored file "outside the spool")
        self.root = self.root.resolve()

    @property
    def data_dir(self) -> Path:
        """The node's ``storage.data_dir``."""
        return self.root / "var"

    @property
    def tmp_dir(self) -> Path:
        """The node's ``TMPDIR``."""
        return self.root / "tmp"

    @property
    def log_path(self) -> Path:
        """Where ``serve`` logs."""
        return self.root / "serve.log"

    def env(self) -> dict[str, str]:
        """Return the node's environment: loopback ports, its folders, short timeouts."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPINEXR_")}
        env.update(
            TMPDIR=str(self.tmp_dir),
            SPINEXR_DICOM__HOST="127.0.0.1",
            SPINEXR_DICOM__PORT=str(self.dicom_port),
            SPINEXR_DICOM__ACSE_TIMEOUT="10",
            SPINEXR_DICOM__NETWORK_TIMEOUT="10",
            SPINEXR_DICOM__DIMSE_TIMEOUT="10",
            SPINEXR_DICOM__MAX_ASSOCIATIONS="20",
            SPINEXR_HTTP__HOST="127.0.0.1",
            SPINEXR_HTTP__PORT=str(self.http_port),
            SPINEXR_HTTP__API_TOKEN=self.token,
            SPINEXR_HTTP__BODY_TIMEOUT_SECONDS="10",
            SPINEXR_HTTP__AUTH_MAX_FAILURES="1000000",
            SPINEXR_STORAGE__DATA_DIR=str(self.data_dir),
            SPINEXR_STORAGE__MIN_FREE_MB="1",
            SPINEXR_STUDY__COMPLETION_SECONDS="5",
        )
        return env

    def start(self, timeout: float = 90) -> None:
        """Start ``serve`` and wait for ``/healthz``."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [str(EXE), "serve"], env=self.env(), cwd=self.root, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start; see {self.log_path}")
            time.sleep(0.3)
        self._sampler = threading.Thread(target=self._sample, name="rss", daemon=True)
        self._sampler.start()

    def healthy(self) -> bool:
        """Whether ``/healthz`` answers 200."""
        try:
            url = f"http://127.0.0.1:{self.http_port}/healthz"
            with urllib.request.urlopen(url, timeout=5) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def alive(self) -> bool:
        """Whether ``serve`` is still running."""
        return self.proc is not None and self.proc.poll() is None

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            self.sample()

    def sample(self) -> None:
        """Record the peak RSS of ``serve`` and of each of its descendants by kind."""
        if self.proc is None:
            return
        pid = self.proc.pid
        self.peaks["serve"] = max(self.peaks.get("serve", 0), vm_hwm(pid))
        for child in descendants(pid):
            kind = "association or worker process"
            try:
                cmd = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"dimse.listener" in cmd:
                kind = "listener and its association processes"
            self.peaks[kind] = max(self.peaks.get(kind, 0), vm_hwm(child))

    def association_processes(self) -> list[int]:
        """Association processes still running (children of the listener)."""
        if self.proc is None:
            return []
        out = []
        for child in descendants(self.proc.pid):
            try:
                cmd = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"dimse.listener" in cmd:
                out.extend(descendants(child))
        return out

    def log_problems(self) -> list[str]:
        """Log lines that mean a crash or an unhandled exception."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        lines = text.splitlines()
        problems: list[str] = []
        for i, line in enumerate(lines):
            if not PROBLEM_LINES.search(line):
                continue
            if line.startswith("Traceback") and _handled_by_pynetdicom(lines, i):
                continue
            problems.append(line)
        return problems

    def stray_files(self) -> list[str]:
        """Files outside the places the node may keep files, and spool files no row names.

        Allowed: the database files at the top of the data folder, ``spool/<study>/<sop>.dcm``
        (recorded in the ``instances`` table), ``outputs/``. Anything in ``spool/.incoming``
        (a temporary file left behind) or in the node's ``TMPDIR`` is stray.
        """
        stray = [f"tmp/{p}" for p in sorted(tree(self.tmp_dir))]
        recorded = self._recorded_paths()
        for rel in sorted(tree(self.data_dir)):
            parts = Path(rel).parts
            if len(parts) == 1 and DB_FILES.match(parts[0]):
                continue
            if parts[0] == "outputs":
                continue
            in_spool = parts[0] == "spool" and len(parts) == 3 and parts[1] != ".incoming"
            if in_spool and (recorded is None or str(Path(*parts[1:])) in recorded):
                continue
            stray.append(f"var/{rel}")
        return stray

    def _recorded_paths(self) -> set[str] | None:
        db = self.data_dir / "spinexr.db"
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
                return {str(row[0]) for row in conn.execute("SELECT path FROM instances")}
        except sqlite3.Error:
            return None

    def stop(self) -> int | None:
        """Stop ``serve`` with SIGTERM (SIGKILL after 30 s); return its exit code."""
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


_LOG_RECORD = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


def _handled_by_pynetdicom(lines: list[str], start: int) -> bool:
    """Whether the traceback at ``lines[start]`` is one pynetdicom logged and handled.

    A chained exception ("During handling of the above exception, another exception
    occurred", "The above exception was the direct cause of ...") is printed as several
    tracebacks, innermost first; what was raised, and logged, is the last one, so its first
    frame decides (e.g. pydicom failing to decode a command set inside pynetdicom's
    ``fsm.do_action``, which logs it and aborts the association).
    """
    end = start + 1
    while end < len(lines) and not _LOG_RECORD.match(lines[end]):
        end += 1
    headers = [i for i in range(start, end) if lines[i].startswith("Traceback")]
    last = headers[-1]
    first_frame = lines[last + 1] if last + 1 < len(lines) else ""
    return bool(HANDLED_BY_PYNETDICOM.search(first_frame))
