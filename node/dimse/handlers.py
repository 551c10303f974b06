"""The SCP's event handlers for one association: policy, C-ECHO, C-STORE.

The C-STORE handler is thin: it takes the file pynetdicom wrote (``event.dataset_path``),
hands it to :class:`IngestService` (checks, fsync, database commit) and answers with the
status that maps the outcome. It never raises and never decodes pixels.

When the node stops, :meth:`AssociationHandlers.abort_when_idle` lets the C-STORE being
recorded finish its commit, then aborts the association (A-ABORT): nothing acknowledged is
lost, and nothing is acknowledged after it.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from sqlalchemy.exc import SQLAlchemyError

from spinexr.node.dimse.stream import DataSetWatch
from spinexr.node.errors import IngestError
from spinexr.node.ingest.service import IngestService
from spinexr.node.ingest.statuses import SUCCESS, status_for
from spinexr.node.settings import Settings

logger = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, reason) - PS3.8 9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service-user, calling AE not recognised
REJECT_NO_REASON = (0x01, 0x01, 0x01)  # permanent, service-user, no reason given
REJECT_CONGESTION = (0x02, 0x03, 0x01)  # transient, service-provider, temporary congestion
REJECT_LIMIT = (0x02, 0x03, 0x02)  # transient, service-provider, local limit exceeded


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
        """Let the C-STORE being recorded finish (at most ``timeout`` s), then A-ABORT.

        Parameters
        ----------
        assoc : Association
            The association (pynetdicom's public ``abort``: an A-ABORT PDU, then the
            connection closed).
        timeout : float
            Seconds to wait for the recording in flight.
        """
        finished = self._recording.acquire(timeout=timeout)
        try:
            self._stopping = True  # a C-STORE that arrives now is not recorded
            if not finished:
                logger.warning("stopping: a C-STORE still recording after %.1f s", timeout)
            assoc.abort()
        finally:
            if finished:
                self._recording.release()

    def on_store(self, event: evt.Event) -> int:
        """Ingest the received data set; return its DIMSE status."""
        with self._recording:
            if self._stopping:
                self.watch.clear()
                return status_for("out_of_resources")
            return self._store(event)

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
            logger.error(
                "C-STORE %s from %s: storage failure (%s)", sop_uid, calling, type(exc).__name__
            )
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
