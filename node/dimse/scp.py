"""The node's DICOM SCP as ``serve`` runs it: a listener process, restarted if it dies.

The listener (:mod:`spinexr.node.dimse.listener`) accepts associations and runs each in a
process of its own (:mod:`spinexr.node.dimse.association`), with the handlers of
:mod:`spinexr.node.dimse.handlers`. Every process shares the spool and the database; the
recorder's unique (SOP Instance UID, version) constraint and retry keep duplicates and
versions right between them, the listener's count keeps ``dicom.max_associations`` for all
of them, and each reads the same settings (allow-lists, TLS, limits, free-space watermark).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import subprocess
import sys
import threading

from spinexr.node.settings import Settings

logger = logging.getLogger(__name__)

START_TIMEOUT = 60.0
"""Seconds a listener may take to start listening."""
STOP_TIMEOUT = 5.0
"""Seconds a listener may take to stop (its associations' grace included) before a kill."""


class ScpStartError(RuntimeError):
    """The listener could not start (e.g. the port is taken)."""


class StoreSCP:
    """Start the listener process and keep it running.

    Parameters
    ----------
    settings : Settings
        Validated settings (handed to the listener).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self._alive_r, self._alive_w = os.pipe()  # the listener sees EOF once we are gone
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._watch: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The listener's process id (None before start)."""
        return self.proc.pid if self.proc is not None else None

    def _spawn(self) -> subprocess.Popen[bytes]:
        ready_r, ready_w = os.pipe()
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "spinexr.node.dimse.listener",
                    str(ready_w),
                    str(self._alive_r),
                ],
                stdin=subprocess.PIPE,
                pass_fds=(ready_w, self._alive_r),
            )
        finally:
            os.close(ready_w)
        try:
            assert proc.stdin is not None
            proc.stdin.write(pickle.dumps((self.settings, level)))
            proc.stdin.close()
            answer = _read_line(ready_r, START_TIMEOUT)
        finally:
            os.close(ready_r)
        if answer != "ready":
            _end(proc, timeout=5)
            raise ScpStartError(f"DICOM SCP did not start: {answer or 'no answer'}")
        return proc

    def start(self) -> None:
        """Start the listener (listening once this returns) and a thread that restarts it.

        Raises
        ------
        ScpStartError
            The listener could not start (the port is taken, a TLS file is missing, ...).
        """
        self.proc = self._spawn()
        self._watch = threading.Thread(target=self._keep_running, name="scp-watch", daemon=True)
        self._watch.start()

    def _keep_running(self) -> None:
        delay = 1.0
        while not self._stop.wait(0.5):
            with self._lock:
                proc = self.proc
                if proc is None or proc.poll() is None:
                    delay = 1.0
                    continue
                logger.error(
                    "DICOM listener (pid %d) exited with %s; restarting", proc.pid, proc.returncode
                )
                try:
                    self.proc = self._spawn()
                    logger.info("DICOM listener restarted (pid %d)", self.proc.pid)
                    continue
                except (ScpStartError, OSError) as exc:
                    logger.error("%s; next try in %.0f s", exc, delay)
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, 30.0)

    def begin_stop(self) -> None:
        """Ask the listener to stop (SIGTERM) without waiting: see :meth:`stop`.

        No new associations; running ones finish the C-STORE being recorded and are
        aborted (A-ABORT).
        """
        with self._lock:
            if self._stop.is_set():
                return  # asked already
            self._stop.set()
        if self._watch is not None:
            self._watch.join(timeout=10)
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()

    def stop(self) -> None:
        """Stop the listener and wait for it (killed after :data:`STOP_TIMEOUT` seconds)."""
        self.begin_stop()
        with self._lock:
            if self.proc is not None:
                _end(self.proc, timeout=STOP_TIMEOUT)
        for fd in (self._alive_w, self._alive_r):
            with contextlib.suppress(OSError):
                os.close(fd)


def _read_line(fd: int, timeout: float) -> str:
    """Read one line (without its newline) from ``fd`` within ``timeout`` seconds."""
    data = b""
    ready, _, _ = select.select([fd], [], [], timeout)
    while ready and not data.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
        ready, _, _ = select.select([fd], [], [], timeout)
    return data.decode(errors="replace").strip()


def _end(proc: subprocess.Popen[bytes], *, timeout: float) -> None:
    """SIGTERM ``proc``, SIGKILL it after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
