"""One association in its own process: pynetdicom's acceptor, our handlers, our spool.

The listener (:mod:`spinexr.node.dimse.listener`) forks a process for each connection it
accepts and calls :func:`serve_association` there. That process:

* points :data:`tempfile.tempdir` at its own folder in the spool's temporary area
  (:meth:`Spool.receiving_folder`), where pynetdicom writes each C-STORE data set as it
  arrives (:data:`pynetdicom._config.STORE_RECV_CHUNKED_DATASET`, set by the listener): on
  the spool's file system, so an accepted file is moved into place without a copy, and the
  folder's one file is the data set this association is receiving (what
  :class:`~spinexr.node.dimse.stream.DataSetWatch` needs to enforce the limits);
* opens its own database connection and :class:`IngestService`;
* hands the connection to pynetdicom through the listener's server
  (:meth:`socketserver.BaseServer.finish_request`, which starts the association thread) with
  our handlers bound (:meth:`AssociationServer.bind`), and waits for it to end;
* on SIGTERM (the listener stopping), aborts the association with an A-ABORT PDU at a moment
  the peer waits for the node, after the C-STORE being recorded has finished its commit
  (:meth:`~spinexr.node.dimse.handlers.AssociationHandlers.abort_when_idle`).

Why ``pynetdicom._config`` although its name starts with an underscore: it is pynetdicom's
documented configuration module ("Configuration Options (pynetdicom._config)" in the API
reference; the user guide tells applications to set its switches, and there is no other way
to turn chunked receiving on). We set two documented switches, as documented, in the
listener process that exists only to run the SCP; we touch nothing else in it. The test of
private names (``tests/test_library_private_names.py``) allows exactly those switches.

pynetdicom 3.0 reads a PDU whole whatever length it declares. The association request, the
first PDU, is checked here before pynetdicom reads it (plain TCP: over TLS only after it is
read); later PDUs are checked by the data-set watch once read, and the connection closed.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import ssl
import struct
import tempfile
import threading
from typing import Any

from pynetdicom.transport import AssociationServer

from spinexr.node.db.engine import make_engine, make_session_factory
from spinexr.node.dimse.handlers import AssociationHandlers, max_pdu_read
from spinexr.node.dimse.stream import DataSetWatch
from spinexr.node.errors import is_disk_full
from spinexr.node.ingest.service import IngestService
from spinexr.node.ingest.spool import Spool
from spinexr.node.settings import Settings

logger = logging.getLogger(__name__)

A_ASSOCIATE_RQ = 0x01
JOIN_WAIT = 0.1
"""Seconds between two looks at whether ``serve`` is still there, or the process asked to
stop, while the association runs."""
RECORDING_WAIT = 1.5
"""Seconds a stopping association waits for the C-STORE arriving or being recorded to reach
its answer (the A-ABORT goes in its place) before it aborts all the same."""


def first_pdu_fits(conn: socket.socket, limit: int, timeout: float) -> bool:
    """Whether the first PDU waiting on ``conn`` declares at most ``limit`` bytes (peeked).

    Parameters
    ----------
    conn : socket.socket
        A plain TCP connection nothing has read from.
    limit : int
        Longest PDU accepted.
    timeout : float
        Seconds to wait for its 6-byte header.

    Returns
    -------
    bool
        ``False`` when the peer declares a longer PDU; ``True`` otherwise (also when it
        closes or stays silent: pynetdicom then handles that as usual).
    """
    # Blocking, with the kernel's receive timeout: MSG_WAITALL waits for the whole header.
    conn.setblocking(True)
    seconds = int(timeout)
    conn.setsockopt(
        socket.SOL_SOCKET,
        socket.SO_RCVTIMEO,
        struct.pack("ll", seconds, int((timeout - seconds) * 1e6)),
    )
    try:
        head = conn.recv(6, socket.MSG_PEEK | socket.MSG_WAITALL)
    except OSError:
        return True
    finally:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 0))
    if len(head) < 6:
        return True
    pdu_type, _, length = struct.unpack(">BBL", head)
    if pdu_type == A_ASSOCIATE_RQ and length > limit:
        logger.warning("closing connection: peer sent a %d-byte PDU, limit %d", length, limit)
        return False
    return True


A_ABORT_PROVIDER = bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0))
"""A-ABORT PDU, source: service provider, reason: not specified (PS3.8 9.3.8)."""


def abort_on_thread_failure(conn: socket.socket | ssl.SSLSocket, args: Any) -> None:
    """Answer an exception in pynetdicom's association thread with an A-ABORT.

    pynetdicom 3.0 lets some malformed PDUs raise in its association (reactor) thread:
    a P-DATA-TF whose command set lacks Command Field, a presentation context id it never
    negotiated, an item shorter than its declared length. The thread ends; without this the
    peer would see a bare closed connection and the log a traceback. The exception's type
    is logged (never its message: it may quote received values).

    Parameters
    ----------
    conn : socket.socket
        The association's connection.
    args : threading.ExceptHookArgs
        The failed thread's exception.
    """
    if args.exc_value is not None and is_disk_full(args.exc_value):
        logger.error("the disk filled up while a data set was written: aborting the association")
    else:
        logger.warning(
            "association thread failed on a malformed PDU (%s): aborting", args.exc_type.__name__
        )
    try:
        conn.sendall(A_ABORT_PROVIDER)
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def serve_gone(alive_fd: int) -> bool:
    """Whether the ``serve`` process is gone (its end of the pipe closed)."""
    ready, _, _ = select.select([alive_fd], [], [], 0)
    return bool(ready)


def serve_association(
    server: AssociationServer,
    conn: socket.socket,
    address: Any,
    settings: Settings,
    *,
    tls: ssl.SSLContext | None,
    over_limit: bool,
    alive_fd: int,
) -> int:
    """Run one association in this (forked) process until it ends.

    Parameters
    ----------
    server : AssociationServer
        The listener's server (its listening socket already closed in this process).
    conn : socket.socket
        The accepted connection.
    address : tuple
        The peer's address.
    settings : Settings
        Validated settings.
    tls : ssl.SSLContext or None
        Server-side TLS context, when TLS is on.
    over_limit : bool
        ``dicom.max_associations`` are open already (the association is rejected).
    alive_fd : int
        Read end of a pipe whose write end ``serve`` holds: readable once ``serve`` is gone.

    Returns
    -------
    int
        Exit code for the process.
    """
    cfg = settings.dicom
    spool = Spool(settings.storage.spool_dir)
    folder = spool.receiving_folder(os.getpid())
    tempfile.tempdir = str(folder)
    if tls is None and not first_pdu_fits(conn, max_pdu_read(settings), cfg.acse_timeout):
        conn.close()
        return 0
    conn.settimeout(cfg.network_timeout)
    if tls is not None:
        try:
            conn = tls.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            logger.warning("TLS handshake with %s failed: %s", address[0], type(exc).__name__)
            conn.close()
            return 0
    engine = make_engine(settings.database_url)
    ingest = IngestService(settings, make_session_factory(engine), spool)
    watch = DataSetWatch(
        folder,
        limit=cfg.max_dataset_bytes,
        max_pdu=max_pdu_read(settings),
        check_space=ingest.check_space,
    )
    watch.clear()  # left by an earlier process with this pid
    handlers = AssociationHandlers(settings, ingest, watch, over_limit=over_limit)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.excepthook = lambda args: abort_on_thread_failure(conn, args)
    try:
        for event, handler in handlers.bindings():
            server.bind(event, handler)
        server.finish_request(conn, address)  # starts the association's thread
        for assoc in server.active_associations:
            while assoc.is_alive():
                assoc.join(JOIN_WAIT)
                if serve_gone(alive_fd):
                    return 1  # as if this process had been killed with serve
                if stop.is_set() and not assoc.is_aborted:
                    logger.info("stopping: aborting the association with %s", address[0])
                    handlers.abort_when_idle(assoc, RECORDING_WAIT)
    finally:
        watch.clear()
        engine.dispose()
    return 0
