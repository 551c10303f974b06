"""Host names checked before a connection, so an unknown name gets a readable reason.

pynetdicom logs a failed name lookup and reports a failed association; requests wraps it in
a ``ConnectionError`` several exceptions deep. Either way the admin would read "failed" or
"ConnectionError" in the dead letter, not that the configured name is wrong.
"""

from __future__ import annotations

import socket

from spinexr.node.errors import SpinexrError


def require_resolvable(host: str, port: int | None = None) -> None:
    """Raise unless ``host`` resolves to at least one address.

    Parameters
    ----------
    host : str
        A host name or an IP address literal.
    port : int, optional
        The port (only passed through to the resolver).

    Raises
    ------
    SpinexrError
        ``host name '<host>' does not resolve (<resolver's reason>)``.
    """
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else "not a valid host name"
        raise SpinexrError(f"host name {host!r} does not resolve ({reason})") from exc
