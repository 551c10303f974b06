"""STOW-RS target: mutated multipart/related bodies POSTed to the live node.

Each input wraps the mutated file in a request to ``POST /dicomweb/studies`` whose framing
is itself mutated now and then: boundaries (mismatched, missing, quoted, over-long, inside
the data, no closing delimiter), part headers (missing or wrong content type, garbage
lines), request content types, declared sizes (shorter than the body), extra parts that are
not DICOM, a missing or wrong bearer token, a study path that does not match. The outcome is
the HTTP status code (or how the connection ended).
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from spinexr.fuzz.report import HANG_SECONDS, Finding, Result

BOUNDARY: Final = "fuzzBoundary42"


@dataclass
class Request:
    """A STOW-RS request being built (then mutated)."""

    parts: list[tuple[list[str], bytes]]
    token: str
    path: str = "/dicomweb/studies"
    content_type: str = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    boundary: str = BOUNDARY
    closing: bool = True
    declared: int | None = None
    extra_headers: list[str] = field(default_factory=list)

    def body(self) -> bytes:
        """Return the multipart body."""
        out = b""
        for headers, data in self.parts:
            head = "".join(f"{h}\r\n" for h in headers)
            out += f"--{self.boundary}\r\n{head}\r\n".encode("latin-1") + data + b"\r\n"
        if self.closing:
            out += f"--{self.boundary}--\r\n".encode("latin-1")
        return out

    def encode(self, port: int) -> bytes:
        """Return the whole HTTP/1.1 request."""
        body = self.body()
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(body) if self.declared is None else self.declared}",
            "Connection: close",
            *([f"Authorization: Bearer {self.token}"] if self.token else []),
            *self.extra_headers,
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _boundary(req: Request, rng: random.Random) -> None:
    choice = rng.randrange(6)
    if choice == 0:
        req.boundary = "otherBoundary"  # body and header disagree
    elif choice == 1:
        req.content_type = 'multipart/related; type="application/dicom"'
    elif choice == 2:
        req.boundary = req.boundary[:-1]
        req.content_type = f'multipart/related; type="application/dicom"; boundary="{req.boundary}"'
    elif choice == 3:
        req.boundary = "b" * rng.choice((71, 200, 5000))
        req.content_type = f'multipart/related; type="application/dicom"; boundary={req.boundary}'
    elif choice == 4:  # the boundary inside the part's data
        headers, data = req.parts[0]
        cut = rng.randrange(len(data) + 1)
        req.parts[0] = (headers, data[:cut] + f"\r\n--{BOUNDARY}\r\n".encode() + data[cut:])
    else:
        req.closing = False


PART_TYPES: Final = (
    "Content-Type: application/octet-stream",
    "Content-Type: text/plain",
    "Content-Type: application/dicom+json",
    "Content-Type:",
)


def _part_headers(req: Request, rng: random.Random) -> None:
    headers, data = req.parts[0]
    choice = rng.randrange(5)
    if choice == 0:
        headers = []
    elif choice == 1:
        headers = [rng.choice(PART_TYPES)]
    elif choice == 2:
        headers = [*headers, "X-Garbage " + "x" * rng.randint(0, 3000)]
    elif choice == 3:
        headers = [*headers, "Content-Type: " + "a/" * rng.randint(1, 2000)]
    else:
        headers = ["Content-Type: application/dicom; transfer-syntax=1.2.3", "Content-Length: 1"]
    req.parts[0] = (headers, data)


def _request_type(req: Request, rng: random.Random) -> None:
    req.content_type = rng.choice(
        (
            f"multipart/form-data; boundary={BOUNDARY}",
            f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
            f"multipart/related; boundary={BOUNDARY}",
            "application/dicom",
            "",
            f"multipart/related; type=application/dicom; boundary={BOUNDARY}; boundary=x",
        )
    )


def _sizes(req: Request, rng: random.Random) -> None:
    choice = rng.randrange(4)
    if choice == 0:
        req.parts = []
    elif choice == 1:
        req.declared = max(0, len(req.body()) - rng.randint(1, 200))
    elif choice == 2:
        req.parts[0] = (req.parts[0][0], b"")
    else:
        req.parts = req.parts * rng.randint(2, 6)


def _not_dicom(req: Request, rng: random.Random) -> None:
    png = b"\x89PNG\r\n\x1a\n" + rng.randbytes(200)
    blob = rng.choice(
        (b"{}", png, rng.randbytes(rng.randint(1, 4000)), b"DICM" * 40, bytes(132) + b"DICM")
    )
    part = (["Content-Type: application/dicom"], blob)
    req.parts.insert(rng.randrange(len(req.parts) + 1), part)


def _auth(req: Request, rng: random.Random) -> None:
    req.token = rng.choice(("", "wrong", req.token + "x"))


def _path(req: Request, rng: random.Random) -> None:
    req.path = rng.choice(
        (
            "/dicomweb/studies/1.2.3",
            "/dicomweb/studies/..%2F..%2Fetc",
            "/dicomweb/studies/" + "9" * 300,
            "/dicomweb/studies/%00",
            "/dicomweb/studies/",
        )
    )


FRAMING: Final[dict[str, tuple[Callable[[Request, random.Random], None], int]]] = {
    "boundary": (_boundary, 4),
    "part_headers": (_part_headers, 3),
    "request_type": (_request_type, 2),
    "sizes": (_sizes, 2),
    "not_dicom": (_not_dicom, 3),
    "auth": (_auth, 1),
    "path": (_path, 2),
}
"""Body and request mutations with their weights."""
FRAMING_SHARE = 0.5
"""Share of inputs whose request framing is mutated too (the others carry only the file)."""


def read_status(sock: socket.socket, timeout: float) -> str:
    """Read the answer to its end; return ``http:<code>`` or how the connection ended."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return "silent" if not data else _code(data)
    except OSError as exc:
        return _code(data) if data else f"conn:{type(exc).__name__}"
    return _code(data) if data else "closed"


def _code(data: bytes) -> str:
    parts = data.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/"):
        return "http:" + parts[1].decode("latin-1")
    return "garbled"


class StowTarget:
    """Posts inputs to a node's STOW-RS endpoint.

    Parameters
    ----------
    port : int
        The node's HTTP port on loopback.
    token : str
        Its bearer token.
    rng : random.Random
        Picks the framing mutations.
    """

    name = "stow"

    def __init__(self, port: int, token: str, rng: random.Random) -> None:
        self.port = port
        self.token = token
        self.rng = rng

    def run(self, data: bytes, mutation: str, seed: str) -> Result:
        """POST one input; return its HTTP status (a finding for a hang).

        Parameters
        ----------
        data : bytes
            The mutated file.
        mutation, seed : str
            Its names.

        Returns
        -------
        Result
            ``http:<code>``, or ``closed``/``silent``/``conn:...``.
        """
        req = Request([(["Content-Type: application/dicom"], data)], self.token)
        name = mutation
        if self.rng.random() < FRAMING_SHARE:
            names = list(FRAMING)
            picked = self.rng.choices(names, [FRAMING[n][1] for n in names])[0]
            FRAMING[picked][0](req, self.rng)
            name = f"body_{picked}+{mutation}"
        started = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(req.encode(self.port))
                if req.declared is not None:
                    sock.shutdown(socket.SHUT_WR)
                outcome = read_status(sock, HANG_SECONDS + 5)
        except OSError as exc:
            outcome = f"conn:{type(exc).__name__}"
        seconds = time.monotonic() - started
        finding = None
        if seconds > HANG_SECONDS or outcome == "silent":
            finding = Finding.HANG
        elif outcome == "http:500":
            finding = Finding.UNHANDLED_EXCEPTION
        detail = f"{outcome} after {seconds:.1f} s" if finding else ""
        return Result(self.name, name, seed, outcome, seconds, finding, detail)

    def close(self) -> None:
        """Nothing to release (one connection per request)."""
