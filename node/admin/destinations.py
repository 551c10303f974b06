"""Destinations as the admin sees them (no secrets) and their connectivity test.

One test for the admin API, ``doctor`` and ``/readyz``: DIMSE destinations get a C-ECHO
(`spinexr.node.dimse.scu.echo`, our AE title as calling AE); DICOMweb destinations a
QIDO-RS request (``GET {url}/studies?limit=1``) with their credentials, which shows the
server is reachable and accepts them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from spinexr.node.admin.errors import NotFoundError
from spinexr.node.dimse.scu import echo
from spinexr.node.errors import SpinexrError
from spinexr.node.settings import Destination, Settings

logger = logging.getLogger(__name__)


def _auth(dest: Destination) -> str:
    if dest.token is not None and dest.token.get_secret_value():
        return "bearer"
    if dest.username and dest.password is not None:
        return "basic"
    return "none"


def describe(dest: Destination) -> dict[str, Any]:
    """Return a destination without its secrets.

    Parameters
    ----------
    dest : Destination
        From ``settings.destinations``.

    Returns
    -------
    dict
        Name, kind, address, objects sent, read-back, and the kind of auth used.
    """
    return {
        "name": dest.name,
        "kind": dest.kind,
        "ae_title": dest.ae_title,
        "host": dest.host,
        "port": dest.port,
        "url": dest.url,
        "objects": list(dest.objects),
        "verify": dest.verify,
        "auth": _auth(dest),
    }


def find(settings: Settings, name: str) -> Destination:
    """Return the destination called ``name``.

    Parameters
    ----------
    settings : Settings
        ``destinations``.
    name : str
        Its name.

    Returns
    -------
    Destination
        The destination.

    Raises
    ------
    NotFoundError
        If no destination has that name.
    """
    for dest in settings.destinations:
        if dest.name == name:
            return dest
    known = ", ".join(d.name for d in settings.destinations) or "none configured"
    raise NotFoundError(f"no destination {name!r} (known: {known})")


@dataclass(frozen=True)
class DestinationCheck:
    """Outcome of a destination's connectivity test.

    Attributes
    ----------
    name, kind : str
        The destination.
    address : str
        ``AE@host:port`` or the URL without credentials.
    method : str
        ``C-ECHO`` or ``QIDO-RS``.
    ok : bool
        DIMSE status 0x0000, or an HTTP 2xx answer.
    status, http_status : int or None
        The C-ECHO status, or the HTTP status; None when no answer came.
    round_trip_ms : float
        Time the test took.
    error : str or None
        Why it is not ok.
    """

    name: str
    kind: str
    address: str
    method: str
    ok: bool
    status: int | None
    http_status: int | None
    round_trip_ms: float
    error: str | None


def check_destination(
    settings: Settings, dest: Destination, timeout: float | None = None
) -> DestinationCheck:
    """C-ECHO a DIMSE destination, or QIDO-RS a DICOMweb one, and time it.

    Parameters
    ----------
    settings : Settings
        ``dicom.ae_title`` is the calling AE; ``dicom.scu_timeout`` the default timeout.
    dest : Destination
        The destination.
    timeout : float, optional
        Seconds for the connection and each network wait (``doctor`` and ``/readyz`` pass
        their probe's); default ``dicom.scu_timeout``.

    Returns
    -------
    DestinationCheck
        The outcome (errors are reported in it, not raised).
    """
    if timeout is None:
        timeout = settings.dicom.scu_timeout
    start = time.perf_counter()
    status = http_status = None
    error: str | None = None
    if dest.kind == "dimse":
        assert dest.host is not None and dest.port is not None and dest.ae_title is not None
        method, address = "C-ECHO", f"{dest.ae_title}@{dest.host}:{dest.port}"
        try:
            status = echo(
                dest.host,
                dest.port,
                calling=settings.dicom.ae_title,
                called=dest.ae_title,
                timeout=timeout,
            )
            error = None if status == 0 else f"C-ECHO status 0x{status:04X}"
        except (SpinexrError, OSError) as exc:
            error = str(exc)
    else:
        parts = urlsplit(dest.url or "")
        method = "QIDO-RS"
        address = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
        http_status, error = _qido(dest, timeout)
    check = DestinationCheck(
        name=dest.name,
        kind=dest.kind,
        address=address,
        method=method,
        ok=error is None,
        status=status,
        http_status=http_status,
        round_trip_ms=round((time.perf_counter() - start) * 1000, 1),
        error=error,
    )
    logger.info(
        "destination %s: %s %s in %.0f ms",
        dest.name,
        method,
        "ok" if check.ok else "failed",
        check.round_trip_ms,
    )
    return check


def _qido(dest: Destination, timeout: float) -> tuple[int | None, str | None]:
    """Return the HTTP status of a QIDO-RS request and the error (None for 2xx)."""
    assert dest.url is not None
    headers = {"Accept": "application/dicom+json"}
    auth: httpx.BasicAuth | None = None
    if dest.token is not None and dest.token.get_secret_value():
        headers["Authorization"] = f"Bearer {dest.token.get_secret_value()}"
    elif dest.username and dest.password is not None:
        auth = httpx.BasicAuth(dest.username, dest.password.get_secret_value())
    try:
        response = httpx.get(
            dest.url.rstrip("/") + "/studies",
            params={"limit": "1"},
            headers=headers,
            auth=auth,
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if response.is_success:
        return response.status_code, None
    return response.status_code, f"HTTP {response.status_code} {response.reason_phrase}"
