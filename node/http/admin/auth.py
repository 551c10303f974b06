"""Authentication of the admin API (bearer token) and pages (signed session cookie, CSRF).

Both use ``http.api_token``. When it is empty the admin API and pages are refused with 503:
they are never open by default.

* API: ``Authorization: Bearer <token>``, compared in constant time.
* Pages: a login form; a correct token sets an ``HttpOnly; SameSite=Strict`` cookie whose
  value is ``<expiry>.<nonce>`` signed by ``itsdangerous`` (HMAC-SHA256 keyed by the token;
  the token itself never leaves the login request; changing the token logs everybody out).
  POST forms carry a CSRF token, itsdangerous's signature of the cookie under another salt,
  checked in constant time.

Every refusal with 401 here, in the login form and on STOW-RS counts as a failed
authentication of the client's address; too many lock that address out with 429 and
``Retry-After`` (`spinexr.node.http.ratelimit`, settings ``http.auth_*``).
"""

from __future__ import annotations

import hashlib
import secrets
import time

from fastapi import HTTPException, Request
from itsdangerous import BadSignature, Signer

DISABLED = "admin API disabled: set http.api_token"
SESSION_COOKIE = "spinexr_admin"
SESSION_SECONDS = 8 * 3600
"""How long a page login lasts."""


def configured_token(request: Request) -> str:
    """Return ``http.api_token`` of the app serving ``request`` (empty when unset).

    Parameters
    ----------
    request : Request
        The request.

    Returns
    -------
    str
        The token.
    """
    return str(request.app.state.settings.http.api_token.get_secret_value())


def token_matches(given: str, token: str) -> bool:
    """Compare a presented token with the configured one in constant time.

    Parameters
    ----------
    given, token : str
        Presented and configured tokens.

    Returns
    -------
    bool
        True when both are equal and the configured one is not empty.
    """
    return bool(token) and secrets.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


def require_api_token(request: Request) -> None:
    """FastAPI dependency: a correct ``Authorization: Bearer`` header, or 503/401.

    Parameters
    ----------
    request : Request
        The request.

    Raises
    ------
    HTTPException
        503 when no token is configured, 401 when the header is missing or wrong.
    """
    token = configured_token(request)
    if not token:
        raise HTTPException(503, DISABLED)
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token_matches(given.strip(), token):
        raise HTTPException(
            401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


def _signer(token: str, purpose: str) -> Signer:
    return Signer(token, salt=f"spinexr-admin-{purpose}", digest_method=hashlib.sha256)


def issue_session(token: str, now: float | None = None) -> str:
    """Return a new session cookie value for a page login.

    Parameters
    ----------
    token : str
        The configured token (the signing key).
    now : float, optional
        Current UNIX time (tests).

    Returns
    -------
    str
        ``<expiry>.<nonce>.<signature>``.
    """
    expiry = int((time.time() if now is None else now) + SESSION_SECONDS)
    return _signer(token, "session").sign(f"{expiry}.{secrets.token_hex(8)}").decode("ascii")


def session_valid(token: str, value: str, now: float | None = None) -> bool:
    """Check a session cookie's signature and expiry.

    Parameters
    ----------
    token : str
        The configured token.
    value : str
        The cookie value.
    now : float, optional
        Current UNIX time (tests).

    Returns
    -------
    bool
        True for an unexpired cookie signed with ``token``.
    """
    if not token:
        return False
    try:
        expiry = _signer(token, "session").unsign(value).decode("ascii").partition(".")[0]
    except (BadSignature, UnicodeError):
        return False
    return expiry.isdigit() and int(expiry) > (time.time() if now is None else now)


def csrf_token(token: str, session: str) -> str:
    """Return the CSRF token that POST forms of a session must carry.

    Parameters
    ----------
    token : str
        The configured token.
    session : str
        The session cookie value.

    Returns
    -------
    str
        The signature of ``session`` (URL-safe base64).
    """
    return _signer(token, "csrf").get_signature(session).decode("ascii")


def csrf_valid(token: str, session: str, given: str) -> bool:
    """Check a form's CSRF token in constant time.

    Parameters
    ----------
    token : str
        The configured token.
    session : str
        The session cookie value.
    given : str
        The form field.

    Returns
    -------
    bool
        True when it matches the session.
    """
    return _signer(token, "csrf").verify_signature(session, given)
