"""The SCP's event handlers for one association: policy, C-ECHO, C-STORE.

The C-STORE handler is thin: it takes the file pynetdicom wrote (``event.dataset_path``),
hands it to :class:`IngestService` (checks, fsync, database commit) and answers with the
status that maps the outcome. It never raises and never decodes pixels.

When the node stops, :meth:`AssociationHandlers.abort_when_idle` aborts the association
(A-ABORT) from the association's own thread, at a moment the peer waits for the node: nothing
acknowledged is lost, and nothing is acknowledged after it. Why the thread and the moment
matter (pynetdicom 3.0):

* aborted from another thread, the acceptor's thread may close the connection before its
  DUL has sent the A-ABORT (the peer then sees a bare closed connection);
* once the A-ABORT is sent, pynetdicom closes the connection as soon as nothing more is
  there to read, and a peer still sending gets a TCP reset; pynetdicom's own requestor reads
  only after it has sent all it has queued, so it never sees the A-ABORT (measured: 7 stops
  in 12 ended that way when the node aborted while a data set was arriving).

So the A-ABORT goes

* in place of the answer to the C-STORE whose data set has arrived (not recorded) or is
  being recorded (its commit finishes first): the peer has no acknowledgement for it and
  sends it again later (a second copy of a stored instance is a duplicate, stored once);
* from pynetdicom's reactor when the peer has sent nothing for :data:`QUIET` seconds: the
  association's public ``network_timeout`` is cut to it, and pynetdicom aborts an
  association whose peer is silent that long.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from sqlalchemy.exc import SQLAlchemyError

from spinexr.node.dimse.stream import DataSetWatch
from spinexr.node.errors import IngestError, is_database_unavailable, is_disk_full
from spinexr.node.ingest.service import IngestService
from spinexr.node.ingest.statuses import SUCCESS, status_for
from spinexr.node.settings import Settings

logger = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, reason) - PS3.8 9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service-user, calling AE not recognised
REJECT_NO_REASON = (0x01, 0x01, 0x01)  # permanent, service-user, no reason given
REJECT_CONGESTION = (0x02, 0x03, 0x01)  # transient, service-provider, temporary congestion
REJECT_LIMIT = (0x02, 0x03, 0x02)  # transient, service-provider, local limit exceeded
QUIET = 0.2
"""Seconds without a PDU from the peer for a stopping association to abort."""
STOP_POLL = 0.01
"""Seconds between two looks at a stopping association."""


def _not_network_timeout(record: logging.LogRecord) -> bool:
    """Drop pynetdicom's "Network timeout reached" error: a stopping node's way to abort."""
    return record.getMessage() != "Network timeout reached"


def max_pdu_read(settings: Settings) -> int:
    """Longest PDU the node reads (bytes after the header): its maximum PDU and a margin."""
    return max(settings.dicom.max_pdu, 2**16) + 1024


class AssociationHandlers:
    """Handlers bound to one association (in its own process).

    Parameters
    ----------
    settings : Settings
        ``dicom`` section (allow-lists, limits).
    ingest : IngestService
        Where received data sets go.
    watch : DataSetWatch
        The data set being received.
    over_limit : bool
        ``dicom.max_associations`` are open already: the association is rejected.
    """

    def __init__(
        self, settings: Settings, ingest: IngestService, watch: DataSetWatch, *, over_limit: bool
    ) -> None:
        self.settings = settings
        self.ingest = ingest
        self.watch = watch
        self.over_limit = over_limit
        self._networks = [
            ipaddress.ip_network(n, strict=False) for n in settings.dicom.allowed_networks
        ]
        self._recording = threading.Lock()  # held while a C-STORE is being recorded
        self._stopping = False

    def bindings(self) -> list[tuple[evt.EventType, Callable[[evt.Event], Any]]]:
        """Return ``(event, handler)`` pairs for ``evt_handlers`` / ``bind``."""
        return [
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_DATA_RECV, self.watch.on_data),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
        ]

    def on_requested(self, event: evt.Event) -> None:
        """Reject an association that the allow-lists, the disk or the limit refuse."""
        assoc = event.assoc
        # ae_title is filled in only during negotiation; read the request itself.
        primitive = assoc.requestor.primitive
        calling = str(primitive.calling_ae_title if primitive else "").strip()
        address = assoc.requestor.address
        cfg = self.settings.dicom
        reject: tuple[int, int, int] | None = None
        why = ""
        if self._networks:
            try:
                ip = ipaddress.ip_address(address)
                allowed = any(ip in net for net in self._networks)
            except ValueError:
                allowed = False
            if not allowed:
                reject, why = REJECT_NO_REASON, f"address {address} is not in allowed_networks"
        if reject is None and cfg.allowed_calling_aets and calling not in cfg.allowed_calling_aets:
            reject, why = REJECT_CALLING_AE, f"calling AE {calling!r} is not allowed"
        if reject is None and self.over_limit:
            reject, why = REJECT_LIMIT, f"{cfg.max_associations} associations are open"
        if reject is None:
            try:
                self.ingest.check_space()
            except IngestError as exc:
                reject, why = REJECT_CONGESTION, str(exc)
        if reject is not None:
            logger.warning("association from %s (%s) rejected: %s", calling, address, why)
            assoc.acse.send_reject(*reject)
            assoc.kill()  # as pynetdicom does after its own rejections: flushes the A-ASSOCIATE-RJ

    def on_echo(self, event: evt.Event) -> int:
        """Answer C-ECHO."""
        logger.info("C-ECHO from %s", event.assoc.requestor.ae_title.strip())
        return SUCCESS

    def abort_when_idle(self, assoc: Any, timeout: float) -> None:
        """Abort the association (A-ABORT) once the peer waits for the node.

        Parameters
        ----------
        assoc : Association
            The association.
        timeout : float
            Seconds to wait for its own thread to abort it (see the module's notes); past
            them it is aborted from here all the same (pynetdicom's public ``abort``), and a
            warning logged.
        """
        self._stopping = True  # the next C-STORE answer is an A-ABORT
        logging.getLogger("pynetdicom.association").addFilter(_not_network_timeout)
        assoc.network_timeout = QUIET  # pynetdicom aborts once the peer is silent that long
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if assoc.is_aborted or not assoc.is_alive():
                return
            time.sleep(STOP_POLL)
        finished = self._recording.acquire(timeout=timeout)
        try:
            if not assoc.is_aborted:
                logger.warning("stopping: the association still busy after %.1f s", timeout)
                assoc.abort()
        finally:
            if finished:
                self._recording.release()

    def on_store(self, event: evt.Event) -> int:
        """Ingest the received data set; return its DIMSE status.

        While the node stops, the association is aborted in place of the answer (see the
        module's notes); the status returned then is not sent.
        """
        with self._recording:
            if self._stopping:
                self.watch.clear()
                return self._abort_instead(event, recorded=False)
            status = self._store(event)
            if self._stopping:
                return self._abort_instead(event, recorded=status == SUCCESS)
            return status

    def _abort_instead(self, event: evt.Event, *, recorded: bool) -> int:
        if not event.assoc.is_aborted:
            request = cast(C_STORE, event.request)
            logger.info(
                "stopping: A-ABORT in place of the answer to C-STORE %s (%s)",
                getattr(request, "AffectedSOPInstanceUID", ""),
                "recorded, not acknowledged" if recorded else "not recorded",
            )
            event.assoc.abort()  # in a handler: queues the A-ABORT; no answer is sent
        return status_for("out_of_resources")

    def _store(self, event: evt.Event) -> int:
        calling = event.assoc.requestor.ae_title.strip()
        request = cast(C_STORE, event.request)
        sop_uid = str(getattr(request, "AffectedSOPInstanceUID", ""))
        try:
            spooled = self.watch.finish(event.dataset_path)
            result = self.ingest.ingest_spooled(spooled, calling_ae=calling, source="dimse")
        except IngestError as exc:
            status = status_for(exc.reason)
            logger.warning("C-STORE %s from %s refused 0x%04X: %s", sop_uid, calling, status, exc)
            return status
        except (OSError, SQLAlchemyError) as exc:
            if is_disk_full(exc):
                logger.error("C-STORE %s from %s refused 0xA700: disk full", sop_uid, calling)
                return status_for("out_of_resources")
            why = (
                "the database is unavailable"
                if is_database_unavailable(exc)
                else f"storage failure ({type(exc).__name__})"
            )
            logger.error("C-STORE %s from %s refused 0xA702: %s", sop_uid, calling, why)
            return status_for("storage_failure")
        except Exception:  # never let a handler raise into pynetdicom
            logger.exception("C-STORE %s from %s: internal error", sop_uid, calling)
            return status_for("internal")
        finally:
            # The file was moved into place or is not kept: nothing is left in the folder.
            self.watch.clear()
        logger.info(
            "C-STORE %s from %s: %s (%s)",
            result.sop_instance_uid,
            calling,
            result.outcome.value,
            result.decision,
        )
        return SUCCESS
