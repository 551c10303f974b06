"""Logging set-up for entry points (library modules only call ``getLogger(__name__)``)."""

from __future__ import annotations

import logging
import sys

from spinexr.node.phi import LibraryRecordFilter

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Send log records to stderr with timestamps, without the values libraries quote.

    Python warnings (pydicom raises its validation warnings, which quote values, as
    warnings too) become log records, and every record passes
    :class:`~spinexr.node.phi.LibraryRecordFilter`.

    Parameters
    ----------
    level : str
        Root level name.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(LibraryRecordFilter())
    logging.captureWarnings(True)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs every PDU at DEBUG/INFO, including dataset summaries: keep it quiet.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))
    # pylibjpeg-openjpeg logs every encoded tile at INFO (thousands of lines for the phantoms).
    logging.getLogger("openjpeg").setLevel(max(logging.WARNING, root.level))
