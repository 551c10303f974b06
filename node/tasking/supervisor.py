"""The worker child process of ``serve``, restarted if it dies.

Embedded: it consumes the inference and export queues; scaled out: export only.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

STOP_SECONDS = 2.0
"""How long ``serve`` lets its worker finish a task when it stops, before killing it."""


class WorkerSupervisor:
    """Start ``spinexr-node worker`` as a child and keep it running.

    Parameters
    ----------
    queues : list of str
        Queues the child consumes.
    config_file : Path or None
        Passed on as ``--config`` (environment overrides are inherited).
    """

    def __init__(self, queues: list[str], config_file: Path | None) -> None:
        self.queues = queues
        self.config_file = config_file
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "spinexr.node.cli"]
        if self.config_file is not None:
            cmd += ["--config", str(self.config_file)]
        cmd += ["worker", "--queues", ",".join(self.queues)]
        from spinexr.node.tasking.app import PARENT_ENV

        proc = subprocess.Popen(cmd, env={**os.environ, PARENT_ENV: str(os.getpid())})
        logger.info("worker started (pid %d, queues %s)", proc.pid, ",".join(self.queues))
        return proc

    def start(self) -> None:
        """Start the child and a thread that restarts it when it exits."""
        self.proc = self._spawn()

        def watch() -> None:
            delay = 1.0
            while not self._stop.wait(1.0):
                assert self.proc is not None
                code = self.proc.poll()
                if code is None:
                    delay = 1.0
                    continue
                logger.error("worker exited with code %s; restarting in %.0f s", code, delay)
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, 60.0)
                self.proc = self._spawn()

        self._thread = threading.Thread(target=watch, name="worker-supervisor", daemon=True)
        self._thread.start()

    def begin_stop(self) -> None:
        """Ask the child to stop (SIGTERM: warm shutdown) without waiting: see :meth:`stop`.

        Only the first call signals the child (a second SIGTERM would interrupt the warm
        shutdown of a Celery worker).
        """
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Ask the child to stop (SIGTERM), wait ``timeout`` seconds, then kill it.

        An idle worker exits at once; one in a task finishes it if it can within
        ``timeout``. A task cut short by the kill is not lost: its message is acknowledged
        only after it ran, and the job's lease expires into a retry (the database job table
        is the source of truth).
        """
        self.begin_stop()
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "worker (pid %d) still busy after %.0f s: killed (its job runs again later)",
                    self.proc.pid,
                    timeout,
                )
                self.proc.kill()
                self.proc.wait()
