"""The DICOM SCP: association policy and the services the node offers."""

from __future__ import annotations

import logging

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from spinexr.node.settings import Settings

logger = logging.getLogger(__name__)


def _on_echo(event: evt.Event) -> int:
    logger.info("C-ECHO from %s", event.assoc.requestor.ae_title)
    return 0x0000


def start_scp(settings: Settings) -> ThreadedAssociationServer:
    """Start the SCP in background threads.

    Parameters
    ----------
    settings : Settings
        ``dicom`` section: AE title, host, port, PDU and association limits, timeouts.

    Returns
    -------
    ThreadedAssociationServer
        Call ``shutdown()`` to stop it.
    """
    cfg = settings.dicom
    ae = AE(ae_title=cfg.ae_title)
    ae.maximum_pdu_size = cfg.max_pdu
    ae.maximum_associations = cfg.max_associations
    ae.acse_timeout = cfg.acse_timeout
    ae.dimse_timeout = cfg.dimse_timeout
    ae.network_timeout = cfg.network_timeout
    ae.add_supported_context(Verification)
    server = ae.start_server(
        (cfg.host, cfg.port), block=False, evt_handlers=[(evt.EVT_C_ECHO, _on_echo)]
    )
    assert server is not None  # block=False always returns the server
    logger.info("DICOM SCP %s listening on %s:%d", cfg.ae_title, cfg.host, cfg.port)
    return server
