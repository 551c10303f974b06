"""How the SCP reads PDUs: whole PDUs at once, oversized ones refused, C-STORE data streamed.

pynetdicom reads a PDU in 4 KiB ``recv`` calls, copies it a few times (PDU object, P-DATA
primitive, the message's ``BytesIO``) and hands a C-STORE's whole data set to the handler,
which then writes and hashes it: for multi-megabyte images that is most of the SCP's CPU time
and all of it happens after the last byte arrived, while the sender waits for the response.

Here, once a C-STORE request's command set is decoded, its data set goes to a
:class:`StreamedDataSet`: the Part-10 preamble and file meta are written to a new spool
temporary file at once, and each data fragment is appended (and hashed) as it arrives. The
P-DATA-TF PDUs that carry only data fragments of that message are parsed in the socket's read
buffer (filled by large ``recv_into`` calls, several PDUs at a time) and their fragments
written from there, bypassing pynetdicom's PDU objects and state machine
(in state Sta6 a P-DATA-TF only ever hands its fragments to the DIMSE layer, which is what
happens here). The PDU with the last fragment goes through pynetdicom as a one-byte fragment,
so the message completes, and the handler finds the stream as ``event.request.DataSet``.
Anything else (association PDUs, command fragments, mixed or malformed PDUs, an association
with PDU event handlers bound) takes pynetdicom's own path, from the same bytes.

pynetdicom's two reactor loops per association (the upper layer's and the association's) poll
every millisecond, which on a small machine costs a few percent of a core per association,
idle or not, and up to a millisecond of latency at each hand-over. Here both wait on events
instead: the upper layer on its socket and a wake-up socket (a primitive to send, a stop),
the association on the upper layer's activity. They are pynetdicom 3.0's loops otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from io import BytesIO
from typing import Any, cast

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pynetdicom import evt
from pynetdicom._handlers import standard_pdu_recv_handler
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dsutils import create_file_meta
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket

from spinexr.node.errors import IngestError
from spinexr.node.ingest.spoolwriter import PendingSpool, SpoolWriter

logger = logging.getLogger(__name__)

P_DATA_TF = 0x04
DATA_WAIT = 0.05
"""Seconds the reader waits for the next data PDU of a data set before yielding."""
IDLE_WAIT = 0.05
"""Longest sleep of an idle reactor (timers are checked this often); data, a primitive to
send or a stop request wake it at once."""
_LAST_DATA_FRAGMENT = 0x02
READ_BUFFER = 4 * 2**20
"""Most bytes one ``recv_into`` takes (more when a PDU is larger). Every read lets other
threads take the GIL, and while several associations are busy, each hand-over costs a thread
switch: large reads, a few per data set, keep them rare."""


class LimitedSocket(AssociationSocket):
    """Reads through one buffer filled by large ``recv_into`` calls; refuses oversized PDUs.

    Every reader (the streaming path with :meth:`fill` / :meth:`consume`, pynetdicom with
    :meth:`recv`) takes bytes from the same buffer, so bytes read ahead are never lost and a
    data set's PDUs cost a few large reads instead of two small ones each.
    """

    max_pdu_read = 2**20
    _rbuf: bytearray | None = None
    _rpos = 0
    _rend = 0

    @property
    def buffered(self) -> int:
        """Bytes read from the connection and not yet taken."""
        return self._rend - self._rpos

    @property
    def ready(self) -> bool:
        """Return ``True`` if there is data available to be read."""
        return self.buffered > 0 or bool(AssociationSocket.ready.fget(self))  # type: ignore[attr-defined]

    def has_buffered_data(self) -> bool:
        """Whether bytes are waiting that ``select`` cannot see (buffered, or inside TLS)."""
        sock = self.socket
        return self.buffered > 0 or (isinstance(sock, ssl.SSLSocket) and sock.pending() > 0)

    def wait_readable(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for data; True when some can be read."""
        if self.has_buffered_data():
            return True
        sock = self.socket
        if sock is None:
            return False
        try:
            ready, _, _ = select.select([sock], [], [], timeout)
        except (OSError, ValueError):
            return False
        return bool(ready)

    def _room(self, n: int) -> bytearray:
        """Return the read buffer, what is left moved to the front if ``n`` more would not fit."""
        if self._rbuf is None:
            self._rbuf = bytearray(max(READ_BUFFER, 2 * (self.max_pdu_read + 6)))
        buf = self._rbuf
        if self._rpos + n > len(buf):
            left = self.buffered
            buf[:left] = buf[self._rpos : self._rend]
            self._rpos, self._rend = 0, left
        return buf

    def _refill(self) -> bool:
        """One ``recv_into`` into the buffer's free space; False when the peer closed."""
        # Room for a whole PDU at least, so that no read is cut short by the buffer's end.
        buf = self._room(self.buffered + self.max_pdu_read)
        sock = self.socket
        if sock is None:
            return False
        with memoryview(buf) as view:
            got = sock.recv_into(view[self._rend :])
        if got == 0:
            return False
        self._rend += got
        return True

    def fill(self, n: int) -> memoryview | None:
        """Make the next ``n`` bytes available without taking them.

        Parameters
        ----------
        n : int
            At most ``max_pdu_read`` + 6.

        Returns
        -------
        memoryview or None
            The next ``n`` bytes (valid until the next read), or None when the peer closed
            the connection first (what came stays buffered).
        """
        buf = self._room(n)
        while self.buffered < n:
            if not self._refill():
                return None
        return memoryview(buf)[self._rpos : self._rpos + n]

    def consume(self, n: int) -> None:
        """Take ``n`` buffered bytes."""
        self._rpos += n
        if self._rpos == self._rend:
            self._rpos = self._rend = 0

    def read_into(self, view: memoryview) -> int:
        """Fill ``view``; fewer bytes only when the peer closed the connection.

        Parameters
        ----------
        view : memoryview
            Writable bytes.

        Returns
        -------
        int
            Number of bytes read.
        """
        got, total = 0, len(view)
        while got < total:
            if not self.buffered and not self._refill():
                break  # peer closed: a short read, as with pynetdicom's own loop
            assert self._rbuf is not None
            n = min(self.buffered, total - got)
            with memoryview(self._rbuf) as buffered:
                view[got : got + n] = buffered[self._rpos : self._rpos + n]
            self.consume(n)
            got += n
        return got

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes``; an oversized PDU closes the connection instead."""
        if nr_bytes > self.max_pdu_read:
            logger.warning(
                "closing connection: peer sent a %d-byte PDU, limit %d",
                nr_bytes,
                self.max_pdu_read,
            )
            raise OSError("PDU larger than the negotiated maximum")
        if nr_bytes <= 0 or (self.socket is None and not self.buffered):
            return super().recv(nr_bytes)
        buf = bytearray(nr_bytes)
        with memoryview(buf) as view:
            got = self.read_into(view)
        if got < nr_bytes:
            del buf[got:]
        return buf


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Part-10 preamble, ``DICM`` and file meta for a received data set (as pynetdicom makes).

    Parameters
    ----------
    sop_class_uid, sop_instance_uid : str
        From the C-STORE request.
    transfer_syntax : str
        Of the presentation context the data set came under.

    Returns
    -------
    bytes
        What precedes the data set in the spooled file.
    """
    meta = DicomBytesIO()
    write_file_meta_info(
        meta,
        create_file_meta(
            sop_class_uid=sop_class_uid,  # type: ignore[arg-type]
            sop_instance_uid=sop_instance_uid,  # type: ignore[arg-type]
            transfer_syntax=transfer_syntax,  # type: ignore[arg-type]
        ),
        enforce_standard=True,
    )
    return b"\x00" * 128 + b"DICM" + meta.getvalue()


class StreamedDataSet(BytesIO):
    """Stands in for a C-STORE request's data set: the bytes go to a spool file instead.

    pynetdicom requires a ``BytesIO``; this one stays empty. A refusal found while receiving
    (disk below the watermark, file larger than ``limit``, a write error) is kept, the file is
    deleted at once and the remaining fragments are dropped; the handler answers with the
    refusal once the message is complete.

    Parameters
    ----------
    writer : SpoolWriter or None
        The temporary file (None when refused from the start).
    refusal : IngestError or None
        Why the instance is refused, if it is.
    limit : int
        Largest file accepted (``dicom.max_dataset_bytes``).
    """

    def __init__(self, writer: SpoolWriter | None, refusal: IngestError | None, limit: int) -> None:
        super().__init__()
        self._writer = writer
        self.refusal = refusal
        self._limit = limit
        self._lock = threading.Lock()
        self._owner = "receiver"  # then "handler" (claimed) or "nobody" (abandoned)

    @property
    def size(self) -> int:
        """Bytes written so far (0 once refused)."""
        return self._writer.size if self._writer is not None else 0

    def write(self, data: Any) -> int:
        """Append a fragment to the file (called by the receiving thread only)."""
        view = memoryview(data).cast("B")
        if self._writer is not None:
            if self._writer.size + len(view) > self._limit:
                self._refuse(
                    IngestError("too_large", f"dataset larger than the limit {self._limit}")
                )
            else:
                try:
                    self._writer.write(view)
                except OSError as exc:
                    self._refuse(
                        IngestError("storage_failure", f"spool write failed: {exc.strerror}")
                    )
        return len(view)

    def _refuse(self, refusal: IngestError) -> None:
        self.refusal = refusal
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.discard()

    def claim(self) -> PendingSpool:
        """Take the received file over (the C-STORE handler, once the message is complete).

        Returns
        -------
        PendingSpool
            The temporary file, closed, its hash and fsync finishing in the background; the
            caller moves it into place or discards it.

        Raises
        ------
        IngestError
            The refusal found while receiving, or ``storage_failure`` when the association
            ended first (the file is gone then).
        """
        with self._lock:
            if self._owner != "receiver":
                raise IngestError("storage_failure", "the association ended before the handler")
            self._owner = "handler"
        if self.refusal is not None or self._writer is None:
            raise self.refusal or IngestError("internal", "no spool file")
        writer, self._writer = self._writer, None
        try:
            return writer.finish(sync=True)
        except BaseException:
            writer.discard()
            raise

    def abandon(self) -> None:
        """Delete the file unless the handler has claimed it (the association ended)."""
        with self._lock:
            if self._owner != "receiver":
                return
            self._owner = "nobody"
        self._refuse(IngestError("storage_failure", "the association ended"))

    @property
    def claimed(self) -> bool:
        """Whether the handler took the file over (or it was abandoned)."""
        return self._owner != "receiver"


StreamFactory = Callable[[bytes], StreamedDataSet]
"""Makes the stream for one C-STORE data set from the bytes that precede it in the file."""


def _plan(body: memoryview, context_id: int) -> tuple[list[tuple[int, int]], int | None] | None:
    """Data-fragment ranges of a P-DATA-TF body, if it holds only this message's data.

    Returns ``(ranges, end)`` where ``end`` is the offset just after the PDV carrying the
    last fragment (None if the message goes on), or None when the PDU must take
    pynetdicom's path (a command fragment, another context, malformed items).
    """
    ranges: list[tuple[int, int]] = []
    off, n = 0, len(body)
    while off < n:
        if off + 6 > n:
            return None
        item_length = int.from_bytes(body[off : off + 4], "big")
        if item_length < 2 or off + 4 + item_length > n:
            return None
        control = body[off + 5]
        if body[off + 4] != context_id or control & 0x01:
            return None
        ranges.append((off + 6, off + 4 + item_length))
        off += 4 + item_length
        if control & _LAST_DATA_FRAGMENT:
            return ranges, off
    return (ranges, None) if ranges else None


class StreamingDUL(DULServiceProvider):
    """pynetdicom's DICOM upper layer, with C-STORE data fragments streamed to the spool.

    Installed on an acceptor's association before it starts (``stream_factory`` set then).
    """

    stream_factory: StreamFactory | None = None
    _streams: list[StreamedDataSet] | None = None

    # ------------------------------------------------------------------ streams
    def _open_stream(self, message: C_STORE_RQ) -> StreamedDataSet:
        factory = self.stream_factory
        assert factory is not None
        try:
            cs = message.command_set
            context = self.assoc._accepted_cx[cast(int, message.context_id)]
            head = file_meta_bytes(
                str(cs.AffectedSOPClassUID),
                str(cs.AffectedSOPInstanceUID),
                str(context.transfer_syntax[0]),
            )
        except Exception as exc:  # bad UIDs in the command set: refused, never raised
            refusal = IngestError("internal", f"cannot make the file meta: {type(exc).__name__}")
            return StreamedDataSet(None, refusal, 0)
        return factory(head)

    def _streaming_message(self) -> C_STORE_RQ | None:
        """Return the C-STORE request being received (data set streamed), or None."""
        if self.stream_factory is None:
            return None
        message = self.assoc.dimse.message
        if not isinstance(message, C_STORE_RQ) or message.context_id is None:
            return None
        data = message.data_set
        if not isinstance(data, StreamedDataSet):
            stream = self._open_stream(message)
            if data is not None and data.tell():  # fragments that came with the command
                stream.write(data.getvalue())
            message.data_set = stream
            if self._streams is None:
                self._streams = []
            self._streams = [s for s in self._streams if not s.claimed]
            self._streams.append(stream)
        return message

    def _fast_path_open(self) -> bool:
        if self.state_machine.current_state != "Sta6":
            return False
        if not (self.event_queue.empty() and self._recv_pdu.empty()):
            return False
        # pynetdicom binds its standard logging handler (which does nothing for P-DATA-TF);
        # anyone else watching PDUs gets them the usual way.
        watchers = [*self.assoc.get_handlers(evt.EVT_PDU_RECV)]
        watchers += self.assoc.get_handlers(evt.EVT_DATA_RECV)
        return all(handler is standard_pdu_recv_handler for handler, _ in watchers)

    # ------------------------------------------------------------------ reading
    def _read_pdu_data(self) -> None:
        message = self._streaming_message()
        sock = self.socket
        if message is None or not isinstance(sock, LimitedSocket) or not self._fast_path_open():
            super()._read_pdu_data()
            return
        # The rest of the data set is expected: read on while it comes (pynetdicom's reactor
        # would sleep 1 ms after every PDU that queues no event), as long as nothing else
        # needs the reactor.
        while self._read_data_pdu(sock, message):
            self._idle_timer.restart()
            if (
                self.assoc.dimse.message is not message
                or self._kill_thread
                or not self.to_provider_queue.empty()
                or not self._fast_path_open()
                or not sock.wait_readable(DATA_WAIT)
            ):
                return
        super()._read_pdu_data()

    def _read_data_pdu(self, sock: LimitedSocket, message: C_STORE_RQ) -> bool:
        """Stream one P-DATA-TF of data fragments; False (nothing taken) for anything else."""
        try:
            head = sock.fill(6)
            if head is None:
                return False
            pdu_type, _, length = struct.unpack(">BBL", head)
            if pdu_type != P_DATA_TF or length > sock.max_pdu_read:
                return False
            pdu = sock.fill(6 + length)
        except (OSError, TimeoutError):
            logger.info("connection closed while a PDU was being received")
            self.event_queue.put("Evt17")  # transport connection closed, as pynetdicom does
            return True
        if pdu is None:  # closed mid-PDU: pynetdicom's path reads what came and ends
            return False
        body = pdu[6:]
        context_id = cast(int, message.context_id)
        plan = _plan(body, context_id)
        if plan is None:
            return False
        ranges, end = plan
        stream = cast(StreamedDataSet, message.data_set)
        for start, stop in ranges:
            stream.write(body[start:stop])
        rest = bytes(body[end:]) if end is not None else b""
        sock.consume(6 + length)
        if end is not None:
            # Complete the message through pynetdicom: the last fragment, now empty, and
            # whatever PDVs followed it in this PDU.
            pdu_bytes = struct.pack(">BBLLBB", P_DATA_TF, 0, 6 + len(rest), 2, context_id, 0x02)
            try:
                decoded, event = self._decode_pdu(bytearray(pdu_bytes + rest))
            except Exception:
                logger.exception("unable to decode the received PDU data")
                self.event_queue.put("Evt19")  # invalid PDU, as pynetdicom does
                return True
            self.event_queue.put(event)
            self._recv_pdu.put(decoded)
        return True

    # ------------------------------------------------------------------ reactor
    def prepare(self, stream_factory: StreamFactory | None) -> None:
        """Set up before the thread starts (the association calls this once)."""
        self.stream_factory = stream_factory
        self.activity = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # already signalled (buffer full), or closed
            self._wake_w.send(b"\0")

    def send_pdu(self, primitive: Any) -> None:
        """Queue a primitive to send and wake the reactor."""
        super().send_pdu(primitive)
        self._wake()

    def kill_dul(self) -> None:
        """Stop the reactor and wake it."""
        super().kill_dul()
        self._wake()

    def _wait_for_work(self, timeout: float) -> None:
        """Sleep until data arrives, something is queued to send, or ``timeout``."""
        if not (self.to_provider_queue.empty() and self.event_queue.empty()):
            return
        waiting: list[Any] = [self._wake_r]
        sock = self.socket
        if isinstance(sock, LimitedSocket):
            if sock.has_buffered_data():
                return
            raw = sock.socket
            if raw is not None and raw.fileno() >= 0:
                waiting.append(raw)
        try:
            ready, _, _ = select.select(waiting, [], [], timeout)
        except (OSError, ValueError):  # socket closed meanwhile
            return
        if self._wake_r in ready:
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)

    def run(self) -> None:
        """Thread body (pynetdicom bound its own ``run_reactor`` as the target)."""
        self.run_reactor()

    def run_reactor(self) -> None:
        """Run the upper layer; at the end, delete data sets no handler took over."""
        try:
            self._reactor()
        finally:
            for stream in self._streams or []:
                stream.abandon()
            self.activity.set()
            self._wake_r.close()
            self._wake_w.close()

    def _reactor(self) -> None:
        """Pynetdicom 3.0's ``DULServiceProvider.run_reactor``, event-driven when idle."""
        self._idle_timer.start()
        idle = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                idle = True
            if idle:
                self._wait_for_work(IDLE_WAIT)
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                # Either encode and send a primitive or receive and decode a PDU per loop.
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception:
                logger.exception("exception in the DICOM upper layer, aborting the association")
                abort = A_ABORT_RQ()
                abort.source = 0x02
                abort.reason_diagnostic = 0x00
                if self.socket is not None:
                    self.socket.send(abort.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            self.state_machine.do_action(event)
            self.activity.set()
            idle = False


class StreamingAssociation(Association):
    """An acceptor association whose reactor waits for its upper layer instead of polling."""

    def _run_reactor(self) -> None:
        """Pynetdicom 3.0's ``Association._run_reactor``, woken by the upper layer."""
        dul = cast(StreamingDUL, self.dul)
        self._is_paused = False
        while not self._kill:
            dul.activity.wait(IDLE_WAIT)
            dul.activity.clear()
            # The acceptor's send_*() methods may pause the reactor (as in pynetdicom).
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))
            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                logger.debug("association released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return
            if self.acse.is_aborted():
                logger.info(
                    "association aborted%s",
                    " (A-P-ABORT)" if self.acse.is_aborted("a-p-abort") else "",
                )
                self.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            if self.dul.idle_timer_expired():
                logger.error("network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return
