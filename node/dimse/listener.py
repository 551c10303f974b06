"""The DICOM listener process: accepts connections, runs each association in a process of its own.

``serve`` starts this module as a child (:class:`spinexr.node.dimse.scp.StoreSCP`). It
creates pynetdicom's association server (:meth:`AE.make_server`: it binds and listens), and
accepts from its socket itself: for each connection it forks a process that runs that one
association (:func:`spinexr.node.dimse.association.serve_association`), as dcmtk's
``storescp --fork`` does. Associations therefore run side by side on every core, each with
its own interpreter, database connection and temporary folder, and a process that dies takes
only its own association with it.

The listener counts the association processes it has running: a connection beyond
``dicom.max_associations`` is still accepted, and its association rejected (transient, local
limit exceeded) by its process. It stays single-threaded, so that forking it is safe. It
stops (SIGTERM) by closing its socket and passing the SIGTERM on to the association
processes, each of which lets its C-STORE being recorded finish its commit and aborts its
association (A-ABORT); those not ended after :data:`GRACE_SECONDS` are killed. When
``serve`` is gone (SIGKILL included), it kills them at once and exits, as if they had run
inside ``serve``.

Run as ``python -m spinexr.node.dimse.listener READY_FD ALIVE_FD`` with the pickled
``(settings, log level)`` on standard input; it writes ``ready`` (or ``error: ...``) and a
newline to ``READY_FD`` once it listens (or could not).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import selectors
import shutil
import signal
import socket
import ssl
import sys
import time
from types import FrameType

from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationServer

from spinexr.node.dimse.association import serve_association
from spinexr.node.ingest.spool import Spool
from spinexr.node.logs import configure_logging
from spinexr.node.settings import Settings
from spinexr.node.sopclasses import (
    ANALYSABLE_SOP_CLASSES,
    OUTPUT_LIKE_SOP_CLASSES,
    TRANSFER_SYNTAXES,
)

logger = logging.getLogger(__name__)

GRACE_SECONDS = 2.0
"""How long a stopping listener lets its associations finish their recording and abort
before it kills them."""


def make_server(settings: Settings) -> AssociationServer:
    """Create the node's AE and its association server (bound and listening).

    Parameters
    ----------
    settings : Settings
        ``dicom`` section.

    Returns
    -------
    AssociationServer
        The server; its handlers are bound in each association's process.
    """
    cfg = settings.dicom
    # Documented switches (see spinexr.node.dimse.association): data sets to a file as they
    # arrive; no default per-PDU logging handlers (pynetdicom's logger is quiet anyway).
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.LOG_HANDLER_LEVEL = "none"
    ae = AE(ae_title=cfg.ae_title)
    ae.maximum_pdu_size = cfg.max_pdu
    ae.acse_timeout = cfg.acse_timeout
    ae.dimse_timeout = cfg.dimse_timeout
    ae.network_timeout = cfg.network_timeout
    ae.add_supported_context(Verification)
    for sop_class in (*ANALYSABLE_SOP_CLASSES, *OUTPUT_LIKE_SOP_CLASSES):
        ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
    return ae.make_server((cfg.host, cfg.port))


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """Return the server-side TLS context of ``dicom.tls``, or None when TLS is off."""
    tls = settings.dicom.tls
    if not tls.enabled:
        return None
    assert tls.cert_file is not None and tls.key_file is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.require_client_cert:
        assert tls.ca_file is not None
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(tls.ca_file)
    return ctx


class Listener:
    """Accepts connections and forks a process per association.

    Parameters
    ----------
    settings : Settings
        Validated settings.
    alive_fd : int
        Read end of a pipe whose write end ``serve`` holds (readable once ``serve`` is gone).
    """

    def __init__(self, settings: Settings, alive_fd: int) -> None:
        self.settings = settings
        self.alive_fd = alive_fd
        self.spool = Spool(settings.storage.spool_dir)
        self.server = make_server(settings)
        listening = self.server.socket
        assert listening is not None  # bound and listening
        self.listening: socket.socket = listening
        self.tls = tls_context(settings)
        self.children: set[int] = set()
        self._stop = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        """Accept until stopped (SIGTERM/SIGINT) or until ``serve`` is gone."""
        listening = self.listening
        listening.setblocking(False)
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno())
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the selector
        self._selector.register(listening, selectors.EVENT_READ, "accept")
        self._selector.register(self.alive_fd, selectors.EVENT_READ, "serve gone")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "signal")
        cfg = self.settings.dicom
        logger.info(
            "DICOM SCP %s listening on %s:%d%s (listener pid %d, one process per association)",
            cfg.ae_title,
            cfg.host,
            cfg.port,
            " (TLS)" if self.tls is not None else "",
            os.getpid(),
        )
        while not self._stop:
            events = self._selector.select(timeout=1.0)
            self._reap()  # before accepting: ended associations no longer count
            for key, _ in events:
                if key.data == "accept":
                    self._accept()
                elif key.data == "serve gone":
                    logger.warning("serve is gone: stopping %d association(s)", len(self.children))
                    self._kill_all()
                    return
                else:
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
        self._selector.unregister(listening)
        self.server.server_close()
        self._drain(GRACE_SECONDS)

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stop = True

    def _accept(self) -> None:
        try:
            conn, address = self.listening.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            logger.warning("accept failed: %s", exc)
            return
        over_limit = len(self.children) >= self.settings.dicom.max_associations
        pid = os.fork()
        if pid == 0:
            self._child(conn, address, over_limit)
        self.children.add(pid)
        conn.close()

    def _child(self, conn: socket.socket, address: tuple[str, int], over_limit: bool) -> None:
        """In the forked process: run the association, then exit (never returns)."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()
            self.listening.close()  # this process never accepts
            conn.setblocking(True)
            code = serve_association(
                self.server,
                conn,
                address,
                self.settings,
                tls=self.tls,
                over_limit=over_limit,
                alive_fd=self.alive_fd,
            )
        except BaseException:
            logger.exception("association process failed")
        finally:
            logging.shutdown()
            os._exit(code)

    # ------------------------------------------------------------------ children
    def _reap(self) -> None:
        """Collect ended association processes and delete what they left behind."""
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                logger.warning("association process %d ended with %d", pid, code)
            self._reap_folder(pid)

    def _drain(self, grace: float) -> None:
        """Ask the associations to stop (SIGTERM), wait ``grace`` seconds, kill the rest."""
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
        if self.children:
            logger.warning("stopping: killing %d unfinished association(s)", len(self.children))
        self._kill_all()

    def _kill_all(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while self.children:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.children.discard(pid)
            self._reap_folder(pid)
        self.children.clear()

    def _reap_folder(self, pid: int) -> None:
        """Delete an ended process's folder: a partial data set, never acknowledged."""
        shutil.rmtree(self.spool.receiving_folder(pid), ignore_errors=True)


def main() -> None:
    """Entry point of the listener process (see the module docstring)."""
    ready_fd, alive_fd = int(sys.argv[1]), int(sys.argv[2])
    settings, level = pickle.load(sys.stdin.buffer)
    configure_logging(level)
    with os.fdopen(ready_fd, "w") as ready:
        try:
            listener = Listener(settings, alive_fd)
        except Exception as exc:
            logger.error("DICOM SCP cannot start: %s", exc)
            ready.write(f"error: {exc}\n")
            raise SystemExit(1) from exc
        ready.write("ready\n")
    listener.run()


if __name__ == "__main__":
    main()
