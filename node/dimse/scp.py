"""The DICOM SCP: association policy, C-ECHO and C-STORE.

The C-STORE handler is thin: it hands the received bytes to :class:`IngestService` (spool,
fsync, database commit) and answers with the status that maps the outcome. It never raises
and never decodes pixels.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import threading
from typing import Any, cast

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError

from spinexr.node.errors import IngestError
from spinexr.node.ingest.service import IngestService
from spinexr.node.ingest.statuses import SUCCESS, status_for
from spinexr.node.settings import Settings
from spinexr.node.sopclasses import (
    ANALYSABLE_SOP_CLASSES,
    OUTPUT_LIKE_SOP_CLASSES,
    TRANSFER_SYNTAXES,
)

logger = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, reason) - PS3.8 9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service-user, calling AE not recognised
REJECT_NO_REASON = (0x01, 0x01, 0x01)  # permanent, service-user, no reason given
REJECT_CONGESTION = (0x02, 0x03, 0x01)  # transient, service-provider, temporary congestion


class _LimitedSocket(AssociationSocket):
    """Reads whole PDUs efficiently and refuses oversized ones before reading them.

    pynetdicom reads a PDU in 4 KiB ``recv`` calls appended to a bytearray; for 128 KiB
    PDUs of multi-megabyte images that loop dominates the SCP's CPU time. Here a PDU is
    read with ``recv_into`` straight into one preallocated buffer.
    """

    max_pdu_read = 2**20

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes``; an oversized PDU closes the connection instead."""
        if nr_bytes > self.max_pdu_read:
            logger.warning(
                "closing connection: peer sent a %d-byte PDU, limit %d",
                nr_bytes,
                self.max_pdu_read,
            )
            raise OSError("PDU larger than the negotiated maximum")
        sock = self.socket
        if sock is None or nr_bytes <= 0:
            return super().recv(nr_bytes)
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        got = 0
        try:
            while got < nr_bytes:
                n = sock.recv_into(view[got:])
                if n == 0:  # peer closed: pynetdicom sees a short read, as with its own loop
                    break
                got += n
        finally:
            view.release()
        if got < nr_bytes:
            del buf[got:]
        return buf


class _RequestHandler(RequestHandler):
    max_pdu_read = 2**20

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        sock = assoc.dul.socket
        assert sock is not None
        sock.__class__ = _LimitedSocket
        cast(_LimitedSocket, sock).max_pdu_read = self.max_pdu_read
        return assoc


class StoreSCP:
    """The node's DICOM service provider.

    Parameters
    ----------
    settings : Settings
        ``dicom`` section (AE, address, limits, allow-lists, TLS).
    ingest : IngestService
        Where C-STORE requests go.
    """

    def __init__(self, settings: Settings, ingest: IngestService) -> None:
        self.settings = settings
        self.ingest = ingest
        self._networks = [
            ipaddress.ip_network(n, strict=False) for n in settings.dicom.allowed_networks
        ]
        self._server: ThreadedAssociationServer | None = None

    # ------------------------------------------------------------------ policy
    def _on_requested(self, event: evt.Event) -> None:
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
        if reject is None:
            try:
                self.ingest.check_space()
            except IngestError as exc:
                reject, why = REJECT_CONGESTION, str(exc)
        if reject is not None:
            logger.warning("association from %s (%s) rejected: %s", calling, address, why)
            assoc.acse.send_reject(*reject)
            assoc.kill()  # as pynetdicom does after its own rejections: flushes the A-ASSOCIATE-RJ

    def _on_echo(self, event: evt.Event) -> int:
        logger.info("C-ECHO from %s", event.assoc.requestor.ae_title.strip())
        return SUCCESS

    def _on_store(self, event: evt.Event) -> int:
        calling = event.assoc.requestor.ae_title.strip()
        sop_uid = str(getattr(event.request, "AffectedSOPInstanceUID", ""))
        try:
            meta = DicomBytesIO()
            write_file_meta_info(meta, event.file_meta, enforce_standard=True)
            request = cast(C_STORE, event.request)
            assert request.DataSet is not None
            parts = (b"\x00" * 128 + b"DICM", meta.getvalue(), request.DataSet.getbuffer())
            result = self.ingest.ingest(parts, calling_ae=calling, source="dimse")
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
        logger.info(
            "C-STORE %s from %s: %s (%s)",
            result.sop_instance_uid,
            calling,
            result.outcome.value,
            result.decision,
        )
        return SUCCESS

    # ------------------------------------------------------------------ lifecycle
    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.settings.dicom.tls
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

    def start(self) -> ThreadedAssociationServer:
        """Start listening in background threads.

        Returns
        -------
        ThreadedAssociationServer
            The running server (also kept for :meth:`stop`).
        """
        cfg = self.settings.dicom
        ae = AE(ae_title=cfg.ae_title)
        ae.maximum_pdu_size = cfg.max_pdu
        ae.maximum_associations = cfg.max_associations
        ae.acse_timeout = cfg.acse_timeout
        ae.dimse_timeout = cfg.dimse_timeout
        ae.network_timeout = cfg.network_timeout
        ae.add_supported_context(Verification)
        for sop_class in (*ANALYSABLE_SOP_CLASSES, *OUTPUT_LIKE_SOP_CLASSES):
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        handler_cls = type(
            "_Handler", (_RequestHandler,), {"max_pdu_read": max(cfg.max_pdu, 2**16) + 1024}
        )
        server = ae.make_server(
            (cfg.host, cfg.port),
            ssl_context=self._ssl_context(),
            evt_handlers=handlers,
            server_class=ThreadedAssociationServer,
            request_handler=handler_cls,
        )
        ae._servers.append(server)  # as AE.start_server does; shutdown() removes it
        thread = threading.Thread(target=server.serve_forever, name="dicom-scp", daemon=True)
        thread.start()
        self._server = server
        logger.info(
            "DICOM SCP %s listening on %s:%d%s",
            cfg.ae_title,
            cfg.host,
            cfg.port,
            " (TLS)" if cfg.tls.enabled else "",
        )
        return server

    def stop(self) -> None:
        """Stop accepting and close the listening socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
