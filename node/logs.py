"""Logging set-up for entry points (library modules only call ``getLogger(__name__)``)."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Send log records to stderr with timestamps.

    Parameters
    ----------
    level : str
        Root level name.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs every PDU at DEBUG/INFO, including dataset summaries: keep it quiet.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))
    # pylibjpeg-openjpeg logs every encoded tile at INFO (thousands of lines for the phantoms).
    logging.getLogger("openjpeg").setLevel(max(logging.WARNING, root.level))
