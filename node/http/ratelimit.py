"""Per-address lockout after repeated failed authentications: HTTP 429 with ``Retry-After``.

Every 401 the application answers is a failed authentication of the address that sent the
request: a wrong or missing bearer token on STOW-RS or the admin API, a wrong token in the
admin login form. An address with ``http.auth_max_failures`` failures within
``http.auth_failure_window_seconds`` is locked out for ``http.auth_lockout_seconds``.

Policy
------
* During a lockout every request of that address to an authenticated path (``/dicomweb``,
  ``/api``, ``/admin``) is answered 429 with ``Retry-After`` *before* its credentials are
  looked at: the right token does not help, so guessing goes on at most
  ``auth_max_failures`` tries per lockout. Requests refused with 429 neither count nor
  extend the lockout.
* Only that address is locked out (IPv6 addresses by their /64 network, which one host
  usually holds whole); ``/healthz``, ``/readyz`` and ``/metrics`` stay open, and every
  other address, the admin's included, is unaffected. The lockout ends by itself.
* A successful authentication does not clear earlier failures of the address: an attacker
  sharing an address (NAT, proxy) with a legitimate client cannot reset its count.
* Each lockout is written, without PHI, to the ``spinexr.node.audit`` log: address, number
  of failures, duration, the request that tipped it (method and path, never the query).
  Failed authentications have no study, so they cannot go into a study's timeline.

Behind a reverse proxy the address is the one uvicorn reports (``X-Forwarded-For`` is
trusted only from ``--forwarded-allow-ips``, loopback by default).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)
audit = logging.getLogger("spinexr.node.audit")

GUARDED_PREFIXES = ("/dicomweb", "/api", "/admin")
"""Paths that need authentication: a locked-out address is refused there."""

MAX_CLIENTS = 10_000
"""Addresses remembered at most; the oldest quiet ones are forgotten first."""


def client_key(scope: Scope) -> str:
    """Return the address a request is counted under.

    Parameters
    ----------
    scope : Scope
        The ASGI HTTP scope (its ``client``).

    Returns
    -------
    str
        The IPv4 address, the /64 network of an IPv6 address, the host as given when it is
        not an IP address, or ``"?"`` when the server does not know it.
    """
    client = scope.get("client")
    host = str(client[0]) if client else "?"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class _Record:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0


class AuthFailureLimiter:
    """Counts failed authentications per address and locks an address out.

    Parameters
    ----------
    max_failures : int
        Failures within ``window`` that start a lockout.
    window : float
        Seconds in which failures are counted.
    lockout : float
        Seconds a lockout lasts.
    clock : callable, optional
        Monotonic seconds (tests).
    max_clients : int, optional
        Addresses remembered at most.
    """

    def __init__(
        self,
        max_failures: int,
        window: float,
        lockout: float,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.clock = clock
        self.max_clients = max_clients
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float | None:
        """Return the seconds left of ``client``'s lockout, or None when it is not locked out.

        Parameters
        ----------
        client : str
            The address (`client_key`).

        Returns
        -------
        float or None
            Seconds until the lockout ends.
        """
        with self._lock:
            record = self._records.get(client)
            left = record.locked_until - self.clock() if record is not None else 0.0
        return left if left > 0 else None

    def failed(self, client: str) -> int | None:
        """Count a failed authentication of ``client``.

        Parameters
        ----------
        client : str
            The address (`client_key`).

        Returns
        -------
        int or None
            The number of failures when this one starts a lockout, else None.
        """
        now = self.clock()
        with self._lock:
            record = self._records.pop(client, None) or _Record()
            self._records[client] = record  # most recently active last
            if record.locked_until > now:
                return None
            record.failures.append(now)
            while record.failures and record.failures[0] <= now - self.window:
                record.failures.popleft()
            count = len(record.failures)
            if count >= self.max_failures:
                record.locked_until = now + self.lockout
                record.failures.clear()
            self._forget(now)
        return count if count >= self.max_failures else None

    def __len__(self) -> int:
        """Return the number of addresses remembered."""
        with self._lock:
            return len(self._records)

    def _forget(self, now: float) -> None:
        # Over the bound: forget quiet addresses, then the least recently failing ones that
        # are not locked out, and only then (every one locked out) the oldest lockouts.
        if len(self._records) <= self.max_clients:
            return
        for key, record in list(self._records.items()):
            quiet = not record.failures or record.failures[-1] <= now - self.window
            if quiet and record.locked_until <= now:
                del self._records[key]
        excess = len(self._records) - self.max_clients
        if excess > 0:
            unlocked = [k for k, r in self._records.items() if r.locked_until <= now]
            for key in unlocked[:excess]:
                del self._records[key]
        while len(self._records) > self.max_clients:
            del self._records[next(iter(self._records))]


class AuthLockoutMiddleware:
    """ASGI middleware: 429 for locked-out addresses, every 401 answered counted as a failure.

    Parameters
    ----------
    app : ASGIApp
        The wrapped application.
    limiter : AuthFailureLimiter
        The counts.
    guarded : tuple of str, optional
        Path prefixes refused to a locked-out address.
    """

    def __init__(
        self,
        app: ASGIApp,
        limiter: AuthFailureLimiter,
        guarded: tuple[str, ...] = GUARDED_PREFIXES,
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.guarded = guarded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse a locked-out address on guarded paths, else run the app counting 401s."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = client_key(scope)
        if str(scope["path"]).startswith(self.guarded):
            left = self.limiter.retry_after(client)
            if left is not None:
                seconds = max(1, math.ceil(left))
                refusal = JSONResponse(
                    {"detail": f"too many failed authentications; retry after {seconds} s"},
                    status_code=429,
                    headers={"Retry-After": str(seconds), "Connection": "close"},
                )
                await refusal(scope, receive, send)
                return

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                count = self.limiter.failed(client)
                if count is not None:
                    audit.warning(
                        "authentication lockout: %s locked out for %.0f s after %d failed "
                        "authentications within %.0f s (last: %s %s)",
                        client,
                        self.limiter.lockout,
                        count,
                        self.limiter.window,
                        scope["method"],
                        scope["path"],
                    )
            await send(message)

        await self.app(scope, receive, watch)
