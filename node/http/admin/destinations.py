"""Destinations as the admin sees them (no secrets) and their connectivity tests.

DIMSE destinations get a C-ECHO (`spinexr.node.dimse.scu.echo`, our AE title as calling
AE); DICOMweb destinations a QIDO-RS request (``GET {url}/studies?limit=1``) with their
credentials, which shows the server is reachable and accepts them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx

from spinexr.node.errors import SpinexrError
from spinexr.node.http.admin.errors import NotFoundError
from spinexr.node.settings import Destination, Settings

logger = logging.getLogger(__name__)

TEST_TIMEOUT = 5.0
"""Seconds a connectivity test may take."""


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


def check_destination(settings: Settings, dest: Destination) -> dict[str, Any]:
    """C-ECHO a DIMSE destination, or QIDO-RS a DICOMweb one, and time it.

    Parameters
    ----------
    settings : Settings
        ``dicom.ae_title`` is the calling AE.
    dest : Destination
        The destination.

    Returns
    -------
    dict
        ``name``, ``kind``, ``method`` (``C-ECHO``/``QIDO-RS``), ``ok``, ``status``
        (DIMSE status), ``http_status``, ``round_trip_ms``, ``error``.
    """
    out: dict[str, Any] = {
        "name": dest.name,
        "kind": dest.kind,
        "method": "C-ECHO" if dest.kind == "dimse" else "QIDO-RS",
        "ok": False,
        "status": None,
        "http_status": None,
        "error": None,
    }
    start = time.perf_counter()
    if dest.kind == "dimse":
        from spinexr.node.dimse.scu import echo

        assert dest.host is not None and dest.port is not None and dest.ae_title is not None
        try:
            status = echo(
                dest.host,
                dest.port,
                calling=settings.dicom.ae_title,
                called=dest.ae_title,
                timeout=TEST_TIMEOUT,
            )
            out["status"] = status
            out["ok"] = status == 0
            if status != 0:
                out["error"] = f"C-ECHO status 0x{status:04X}"
        except (SpinexrError, OSError) as exc:
            out["error"] = str(exc)
    else:
        out.update(_qido(dest))
    out["round_trip_ms"] = round((time.perf_counter() - start) * 1000, 1)
    logger.info(
        "destination %s: %s %s in %.0f ms",
        dest.name,
        out["method"],
        "ok" if out["ok"] else "failed",
        out["round_trip_ms"],
    )
    return out


def _qido(dest: Destination) -> dict[str, Any]:
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
            timeout=TEST_TIMEOUT,
        )
    except httpx.HTTPError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    ok = response.status_code in (200, 204)
    return {
        "ok": ok,
        "http_status": response.status_code,
        "error": None if ok else f"HTTP {response.status_code} {response.reason_phrase}",
    }
