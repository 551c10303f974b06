"""spinexr-node service: CLI, settings, database, DICOM ingest and export, Celery tasks."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("spinexr-node")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

MANUFACTURER = "spinexr-node project"
"""Manufacturer written into every object the node creates."""
