"""Sending files to one destination and reading them back, per instance."""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pydicom

from spinexr.node.dimse.scu import SendResult, bounded_ae, send_files
from spinexr.node.errors import SpinexrError
from spinexr.node.resolve import require_resolvable
from spinexr.node.settings import Destination

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstanceOutcome:
    """What a destination said about one instance."""

    sop_instance_uid: str
    ok: bool
    dimse_status: int | None = None
    http_status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    """Seconds the destination asked us to wait (HTTP ``Retry-After``), if it did."""


def retry_after_seconds(headers: Mapping[str, str], now: dt.datetime | None = None) -> float | None:
    """Read an HTTP ``Retry-After`` header: delay-seconds or an HTTP-date (RFC 9110 10.2.3).

    Parameters
    ----------
    headers : mapping
        Response headers (case-insensitive, as requests gives them).
    now : datetime, optional
        The current time (UTC) for an HTTP-date; the clock by default.

    Returns
    -------
    float or None
        Seconds to wait (0 for a date in the past); None when absent or unreadable.
    """
    value = (headers.get("Retry-After") or "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


def send_dimse(
    dest: Destination,
    files: Sequence[Path],
    calling_ae: str,
    timeout: float,
    on_outcome: Callable[[InstanceOutcome], None] | None = None,
) -> list[InstanceOutcome]:
    """C-STORE files to a DIMSE destination and check each response status.

    Parameters
    ----------
    dest : Destination
        ``kind == "dimse"``.
    files : sequence of Path
        Part-10 files.
    calling_ae : str
        Our AE title.
    timeout : float
        Connection and network timeouts (``dicom.scu_timeout``).
    on_outcome : callable, optional
        Called with each file's outcome as soon as its answer arrives (the exporter records
        an acknowledged object at once, so a crash later in the round does not send it twice).

    Returns
    -------
    list of InstanceOutcome
        One per file; an association failure marks every file failed with the reason.
    """
    assert dest.host is not None and dest.port is not None and dest.ae_title is not None

    def each(r: SendResult) -> None:
        if on_outcome is not None and r.sop_instance_uid:
            on_outcome(_outcome(r))

    try:
        results = send_files(
            files,
            dest.host,
            dest.port,
            calling=calling_ae,
            called=dest.ae_title,
            timeout=timeout,
            on_result=each,
        )
    except SpinexrError as exc:
        uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
        return [InstanceOutcome(uid, False, error=str(exc)) for uid in uids]
    return [_outcome(r) for r in results]


def _outcome(r: SendResult) -> InstanceOutcome:
    error = None
    if not r.ok:
        error = r.error or (f"status 0x{r.status:04X}" if r.status is not None else "no response")
    return InstanceOutcome(r.sop_instance_uid, r.ok, dimse_status=r.status, error=error)


def _stow_client(dest: Destination, timeout: float = 20.0) -> object:
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_auth
    from requests.auth import HTTPBasicAuth

    headers = None
    session = None
    if dest.token is not None and dest.token.get_secret_value():
        headers = {"Authorization": f"Bearer {dest.token.get_secret_value()}"}
    elif dest.username and dest.password is not None:
        session = create_session_from_auth(
            HTTPBasicAuth(dest.username, dest.password.get_secret_value())
        )
    assert dest.url is not None
    return DICOMwebClient(url=dest.url, headers=headers, session=session, timeout=timeout)


def send_stow(dest: Destination, files: Sequence[Path], timeout: float) -> list[InstanceOutcome]:
    """STOW-RS files to a DICOMweb destination and read per-instance results.

    Parameters
    ----------
    dest : Destination
        ``kind == "stowrs"``.
    files : sequence of Path
        Part-10 files.
    timeout : float
        Seconds to connect and, then, between two reads of the answer
        (``dicom.scu_timeout``): a destination that never answers fails the round.

    Returns
    -------
    list of InstanceOutcome
        One per file; a refused request (4xx/5xx) or no answer marks every file failed with
        the reason, and the destination's ``Retry-After`` when it sent one.
    """
    import requests

    datasets = [pydicom.dcmread(f) for f in files]
    uids = [str(ds.SOPInstanceUID) for ds in datasets]

    def every(error: str, **kw: object) -> list[InstanceOutcome]:
        return [InstanceOutcome(u, False, error=error, **kw) for u in uids]  # type: ignore[arg-type]

    assert dest.url is not None
    try:
        require_resolvable(urlsplit(dest.url).hostname or "")
    except SpinexrError as exc:
        return every(str(exc))
    client = _stow_client(dest, timeout)
    # dicomweb-client retries some statuses itself; keep our own retry policy in charge.
    client.set_http_retry_params(retry=False)  # type: ignore[attr-defined]
    try:
        response = client.store_instances(datasets)  # type: ignore[attr-defined]
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else None
        wait = retry_after_seconds(exc.response.headers) if exc.response is not None else None
        said = f" (Retry-After {wait:g} s)" if wait is not None else ""
        return every(f"HTTP {code}{said}", http_status=code, retry_after=wait)
    except requests.Timeout:
        return every(f"timed out: no answer within {timeout:g} s (dicom.scu_timeout)")
    except requests.ConnectionError:
        return every("connection failed (not listening, unreachable, or it hung up)")
    except requests.RequestException as exc:
        return every(type(exc).__name__)
    stored = {str(i.ReferencedSOPInstanceUID) for i in response.get("ReferencedSOPSequence", [])}
    failed = {
        str(i.ReferencedSOPInstanceUID): int(i.get("FailureReason", 0xC000))
        for i in response.get("FailedSOPSequence", [])
    }
    return [
        InstanceOutcome(u, True, http_status=200)
        if u in stored and u not in failed
        else InstanceOutcome(
            u,
            False,
            http_status=200,
            dimse_status=failed.get(u),
            error=f"failure reason 0x{failed.get(u, 0xC000):04X}",
        )
        for u in uids
    ]


def verify_dimse(dest: Destination, study_uid: str, calling_ae: str, timeout: float) -> set[str]:
    """Return the SOP Instance UIDs of ``study_uid`` that a C-FIND at IMAGE level finds.

    Parameters
    ----------
    dest : Destination
        The destination.
    study_uid : str
        Study Instance UID.
    calling_ae : str
        Our AE title.
    timeout : float
        Connection and network timeouts (``dicom.scu_timeout``).

    Returns
    -------
    set of str
        Found instances (empty when the peer does not answer C-FIND).
    """
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelFind,
    )

    assert dest.host is not None and dest.port is not None and dest.ae_title is not None
    ae = bounded_ae(calling_ae, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        return set()
    found: set[str] = set()
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = ""
        query.SOPInstanceUID = ""
        for status, identifier in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind
        ):
            if status and status.Status in (0xFF00, 0xFF01) and identifier is not None:
                found.add(str(identifier.get("SOPInstanceUID", "")))
    finally:
        assoc.release()
    return found


def verify_qido(dest: Destination, study_uid: str, timeout: float) -> set[str]:
    """Return the SOP Instance UIDs of ``study_uid`` that QIDO-RS lists at the destination.

    Parameters
    ----------
    dest : Destination
        The destination (``url`` is its DICOMweb root).
    study_uid : str
        Study Instance UID.
    timeout : float
        Seconds to connect and between two reads (``dicom.scu_timeout``).

    Returns
    -------
    set of str
        Found instances (empty when the destination does not answer).
    """
    import requests

    client = _stow_client(dest, timeout)
    try:
        found = client.search_for_instances(study_instance_uid=study_uid)  # type: ignore[attr-defined]
    except requests.RequestException:
        return set()
    return {str(item.get("00080018", {}).get("Value", [""])[0]) for item in found}
