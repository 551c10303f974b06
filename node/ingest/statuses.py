"""DIMSE status codes for ingest refusals (also used as STOW-RS FailureReason values)."""

from __future__ import annotations

SUCCESS = 0x0000
STATUS_FOR_REASON: dict[str, int] = {
    "out_of_resources": 0xA700,
    "too_large": 0xA701,
    "storage_failure": 0xA702,
    "wrong_study": 0xA900,
    "unparseable": 0xC210,
    "missing_uid": 0xC211,
    "truncated": 0xC213,
    "invalid_uid": 0xC214,
    "too_deep": 0xC212,
    "unsupported_sop_class": 0x0122,
    "internal": 0xC2FF,
}
"""Status per refusal reason (PS3.4 B.2.3: A7xx out of resources, A9xx data set does not
match SOP class, Cxxx cannot understand; 0122 SOP class not supported)."""


def status_for(reason: str) -> int:
    """Return the status for an :class:`~spinexr.node.errors.IngestError` reason."""
    return STATUS_FOR_REASON.get(reason, STATUS_FOR_REASON["internal"])
