"""C-ECHO and C-STORE SCU: the replay helper (``send``/``echo``) and the exporter's transport."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from spinexr.node.errors import SpinexrError
from spinexr.node.resolve import require_resolvable
from spinexr.node.sopclasses import TRANSFER_SYNTAXES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendResult:
    """Outcome of one C-STORE."""

    path: Path
    sop_instance_uid: str
    status: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True for success (0x0000) and warnings (0xB000-0xBFFF)."""
        return self.status is not None and (self.status == 0 or 0xB000 <= self.status <= 0xBFFF)


def parse_address(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT``.

    Parameters
    ----------
    text : str
        Address as typed.

    Returns
    -------
    tuple of (str, int)
        Host and port.

    Raises
    ------
    SpinexrError
        If the text is not HOST:PORT.
    """
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SpinexrError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files given directly, plus every file under folders given (sorted)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        elif p.is_file():
            out.append(p)
        else:
            raise SpinexrError(f"{p} does not exist")
    return out


def bounded_ae(calling: str, timeout: float) -> AE:
    """Return an AE whose every wait, the TCP connection included, ends after ``timeout``.

    Without a connection timeout pynetdicom waits for the operating system's (minutes for a
    host that drops packets), so ``echo``, an admin page, ``doctor`` or an export round
    would hang. Every SCU of the node makes its AE here, with ``dicom.scu_timeout``.

    Parameters
    ----------
    calling : str
        Our AE title.
    timeout : float
        Seconds for the TCP connection, ACSE, DIMSE and network waits.

    Returns
    -------
    AE
        The application entity (no contexts requested yet).
    """
    ae = AE(ae_title=calling)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


def associate(ae: AE, host: str, port: int, called: str, timeout: float) -> Any:
    """Associate with a peer or say clearly why not.

    Parameters
    ----------
    ae : AE
        From :func:`bounded_ae`, with its requested contexts.
    host, port : str, int
        Peer address.
    called : str
        The peer's AE title.
    timeout : float
        The AE's timeout (named in the message when it ran out).

    Returns
    -------
    Association
        An established association.

    Raises
    ------
    SpinexrError
        The host name does not resolve; rejected, refused, or no answer within ``timeout``.
    """
    require_resolvable(host, port)
    start = time.monotonic()
    assoc = ae.associate(host, port, ae_title=called)
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        why = "rejected (check both AE titles)"
    elif time.monotonic() - start >= timeout * 0.9:
        why = f"timed out: no answer within {timeout:g} s (dicom.scu_timeout)"
    else:
        why = "failed (not listening, unreachable, or it hung up)"
    raise SpinexrError(f"association with {called}@{host}:{port} {why}")


def echo(
    host: str,
    port: int,
    *,
    calling: str = "SPINEXR",
    called: str = "ANY-SCP",
    timeout: float,
) -> int:
    """Send a C-ECHO and return its status (0x0000 is success).

    Parameters
    ----------
    host, port : str, int
        Peer address.
    calling, called : str
        AE titles.
    timeout : float
        Connection, ACSE, DIMSE and network timeouts in seconds (``dicom.scu_timeout``).

    Returns
    -------
    int
        The C-ECHO status.

    Raises
    ------
    SpinexrError
        If no association could be made or no response came.
    """
    ae = bounded_ae(calling, timeout)
    ae.add_requested_context(Verification)
    assoc = associate(ae, host, port, called, timeout)
    try:
        status = assoc.send_c_echo()
        if not status:
            raise SpinexrError(f"no C-ECHO response from {called}@{host}:{port}")
        return int(status.Status)
    finally:
        assoc.release()


def send_files(
    files: Sequence[Path],
    host: str,
    port: int,
    *,
    calling: str = "SPINEXR",
    called: str = "ANY-SCP",
    max_pdu: int = 131072,
    timeout: float,
    on_result: Callable[[SendResult], None] | None = None,
) -> list[SendResult]:
    """C-STORE files over one association, proposing each file's own transfer syntax.

    Parameters
    ----------
    files : sequence of Path
        DICOM files.
    host, port : str, int
        Peer address.
    calling, called : str
        AE titles.
    max_pdu : int
        Our maximum PDU size.
    timeout : float
        Connection, ACSE, DIMSE and network timeouts in seconds (``dicom.scu_timeout``).
    on_result : callable, optional
        Called after each file (progress reporting).

    Returns
    -------
    list of SendResult
        One per file, in order.

    Raises
    ------
    SpinexrError
        If the association cannot be made.
    """
    headers: list[tuple[Path, pydicom.Dataset | None, str | None]] = []
    contexts: dict[str, set[str]] = {}
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            sop_class = str(ds.SOPClassUID)
            ts = str(ds.file_meta.TransferSyntaxUID)
            contexts.setdefault(sop_class, set()).add(ts)
            headers.append((path, ds, None))
        except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
            headers.append((path, None, f"not a sendable DICOM file: {type(exc).__name__}"))
    ae = bounded_ae(calling, timeout)
    ae.maximum_pdu_size = max_pdu
    for sop_class, syntaxes in contexts.items():
        # Each file's own syntax first, uncompressed as fallback; at most 128 contexts.
        wanted = sorted(syntaxes) + [s for s in TRANSFER_SYNTAXES[:2] if s not in syntaxes]
        ae.add_requested_context(sop_class, wanted)
    results: list[SendResult] = []
    assoc = associate(ae, host, port, called, timeout) if contexts else None
    try:
        ended: str | None = None  # why the association ended before the last file
        for path, header, error in headers:
            if header is None:
                result = SendResult(path, "", None, error)
            elif assoc is None:
                reason = ended or "no association"
                result = SendResult(path, str(header.SOPInstanceUID), None, f"not sent: {reason}")
            else:
                uid = str(header.SOPInstanceUID)
                began = time.monotonic()
                why = None
                try:
                    status = assoc.send_c_store(_sendable(path, header, assoc))
                    code = int(status.Status) if status else None
                    if not status:
                        why = _no_answer(assoc, time.monotonic() - began, timeout)
                    result = SendResult(path, uid, code, why)
                except (ValueError, RuntimeError, OSError) as exc:
                    result = SendResult(path, uid, None, f"{type(exc).__name__}: {exc}")
                if not assoc.is_established:
                    ended = f"the association ended at an earlier file ({why or 'closed'})"
                    assoc = None
            results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        if assoc is not None and assoc.is_established:
            assoc.release()
    return results


def _no_answer(assoc: Any, waited: float, timeout: float) -> str:
    """Why a C-STORE got no response: silence until the timeout, an A-ABORT, a closed link."""
    if waited >= timeout * 0.9:
        return f"timed out: no answer within {timeout:g} s (dicom.scu_timeout)"
    # The DIMSE wait can end before the association's thread has read the A-ABORT: let it.
    assoc.join(timeout=1.0)
    if assoc.is_aborted:
        return "the peer aborted the association (A-ABORT) before answering"
    return "the connection closed before an answer"


def _sendable(path: Path, header: pydicom.Dataset, assoc: Any) -> Path | pydicom.Dataset:
    """Return the file, or its decompressed dataset if the peer refused its syntax.

    Many PACS accept only uncompressed transfer syntaxes.
    """
    ts = str(header.file_meta.TransferSyntaxUID)
    sop = str(header.SOPClassUID)
    accepted = {
        cx.transfer_syntax[0] for cx in assoc.accepted_contexts if cx.abstract_syntax == sop
    }
    if ts in accepted or not header.file_meta.TransferSyntaxUID.is_compressed:
        return path
    ds = pydicom.dcmread(path)
    ds.decompress()
    logger.info("peer refused %s for %s: sending it decompressed", ts, ds.SOPInstanceUID)
    return ds


class Progress:
    """Periodic progress lines (count, MB/s, ETA) for long sends."""

    def __init__(self, total: int, total_bytes: int, every: float = 2.0) -> None:
        self.total, self.total_bytes, self.every = total, total_bytes, every
        self.done = self.bytes = 0
        self.start = self.last = time.monotonic()

    def update(self, nbytes: int) -> str | None:
        """Count one file; return a line to print when one is due."""
        self.done += 1
        self.bytes += nbytes
        now = time.monotonic()
        if now - self.last < self.every and self.done < self.total:
            return None
        self.last = now
        elapsed = max(now - self.start, 1e-6)
        rate = self.bytes / elapsed
        eta = (self.total_bytes - self.bytes) / rate if rate else 0
        return (
            f"sent {self.done}/{self.total} files, {self.bytes / 2**20:.1f} MiB, "
            f"{rate / 2**20:.1f} MiB/s, {self.done / elapsed:.1f} files/s, ETA {eta:.0f} s"
        )
