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
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError

from spinexr.node.dimse.transport import (
    LimitedSocket,
    StreamedDataSet,
    StreamFactory,
    StreamingAssociation,
    StreamingDUL,
)
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


class _RequestHandler(RequestHandler):
    max_pdu_read = 2**20
    stream_factory: StreamFactory | None = None

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        sock = assoc.dul.socket
        assert sock is not None
        sock.__class__ = LimitedSocket
        cast(LimitedSocket, sock).max_pdu_read = self.max_pdu_read
        # The threads start with the association, after this.
        assoc.__class__ = StreamingAssociation
        assoc.dul.__class__ = StreamingDUL
        cast(StreamingDUL, assoc.dul).prepare(type(self).stream_factory)
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

    def _open_stream(self, head: bytes) -> StreamedDataSet:
        """Start a C-STORE data set's spool file (after the free-space check)."""
        limit = self.settings.dicom.max_dataset_bytes
        try:
            writer = self.ingest.open_writer()
        except IngestError as exc:
            return StreamedDataSet(None, exc, limit)
        except OSError as exc:
            failure = IngestError("storage_failure", f"cannot create a spool file: {exc.strerror}")
            return StreamedDataSet(None, failure, limit)
        stream = StreamedDataSet(writer, None, limit)
        stream.write(head)
        return stream

    def _on_store(self, event: evt.Event) -> int:
        calling = event.assoc.requestor.ae_title.strip()
        request = cast(C_STORE, event.request)
        sop_uid = str(getattr(request, "AffectedSOPInstanceUID", ""))
        try:
            data = request.DataSet
            if isinstance(data, StreamedDataSet):  # already in the spool (see transport)
                spooled = data.claim()
                result = self.ingest.ingest_spooled(spooled, calling_ae=calling, source="dimse")
            else:
                assert data is not None
                meta = DicomBytesIO()
                write_file_meta_info(meta, event.file_meta, enforce_standard=True)
                parts = (b"\x00" * 128 + b"DICM", meta.getvalue(), data.getbuffer())
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
            "_Handler",
            (_RequestHandler,),
            {
                "max_pdu_read": max(cfg.max_pdu, 2**16) + 1024,
                "stream_factory": staticmethod(self._open_stream),
            },
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
