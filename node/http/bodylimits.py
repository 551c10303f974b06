"""Request bodies: a size limit per path (413) and a read timeout for every request (408).

Uvicorn waits for a request body as long as its client keeps the connection open, and
reads as much as the client sends. This ASGI middleware bounds both:

* **size** — for a path under a limited prefix (STOW-RS: ``/dicomweb``, limit
  ``http.max_stow_bytes``), a declared ``Content-Length`` above the limit is answered 413
  at once, before any of the body is read and before authentication; a chunked body (no
  ``Content-Length``) is counted as it streams in and answered 413 as soon as it grows
  past the limit (the STOW-RS parser holds no more than the limit).
* **time** — while a request's body is incomplete, a read that brings nothing for
  ``http.body_timeout_seconds`` ends the request with 408 (the time between two reads,
  as nginx's ``client_body_timeout``: a slow upload that keeps moving is not cut).

Both answers carry ``Connection: close`` (uvicorn closes the connection after them, so
the rest of an unread body is never read) and are logged with the method, path and client
address only, never a body byte.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

CLOSE = {"Connection": "close"}


def _who(scope: Scope) -> str:
    client = scope.get("client")
    return f"{scope['method']} {scope['path']} from {client[0] if client else '?'}"


class RequestBodyGuard:
    """ASGI middleware bounding request body size (per path prefix) and read time.

    Parameters
    ----------
    app : ASGIApp
        The wrapped application.
    timeout : float
        Seconds a body read may bring nothing before the request is answered 408.
    limits : mapping of str to int, optional
        Path prefix → largest body in bytes; paths under no prefix have no size limit.
    """

    def __init__(self, app: ASGIApp, timeout: float, limits: Mapping[str, int] | None = None):
        self.app = app
        self.timeout = timeout
        self.limits = dict(limits or {})

    def limit_for(self, path: str) -> int | None:
        """Return the body limit of ``path``.

        Parameters
        ----------
        path : str
            The request path.

        Returns
        -------
        int or None
            Bytes, or None when the path has no size limit.
        """
        found = [limit for prefix, limit in self.limits.items() if path.startswith(prefix)]
        return min(found) if found else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse a declared oversized body, else run the app with a guarded ``receive``."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(str(scope["path"]))
        declared = (Headers(scope=scope).get("content-length") or "").strip()
        if limit is not None and declared.isdigit() and int(declared) > limit:
            logger.warning(
                "request body refused (413): %s declares %s bytes, limit %d",
                _who(scope),
                declared,
                limit,
            )
            refusal = JSONResponse(
                {"detail": f"request body larger than {limit} bytes"}, 413, headers=CLOSE
            )
            await refusal(scope, receive, send)
            return
        await self.app(scope, self._guarded(scope, receive, limit), send)

    def _guarded(self, scope: Scope, receive: Receive, limit: int | None) -> Receive:
        received = 0
        complete = False

        async def guarded_receive() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()
            try:
                async with asyncio.timeout(self.timeout):
                    message = await receive()
            except TimeoutError:
                complete = True
                logger.warning(
                    "request body stalled (408): %s sent nothing for %g s after %d bytes",
                    _who(scope),
                    self.timeout,
                    received,
                )
                raise HTTPException(
                    408, f"no request body data for {self.timeout:g} s", headers=CLOSE
                ) from None
            if message["type"] != "http.request":
                complete = True
                return message
            received += len(message.get("body", b""))
            complete = not message.get("more_body", False)
            if limit is not None and received > limit:
                complete = True
                logger.warning(
                    "request body refused (413): %s grew past %d bytes", _who(scope), limit
                )
                raise HTTPException(413, f"request body larger than {limit} bytes", headers=CLOSE)
            return message

        return guarded_receive
