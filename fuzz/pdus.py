"""Raw DICOM upper-layer PDUs (PS3.8 9.3), valid and mutated, sent over a plain socket.

pynetdicom only sends well-formed PDUs; these helpers build an A-ASSOCIATE-RQ and P-DATA-TF
by hand so that lengths, item types and presentation context ids can be wrong, and read
what the node answers (the first PDU type, a closed connection, or silence).
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Callable
from typing import Final

APPLICATION_CONTEXT: Final = b"1.2.840.10008.3.1.1.1"
VERIFICATION: Final = b"1.2.840.10008.1.1"
CR_STORAGE: Final = b"1.2.840.10008.5.1.4.1.1.1"
EXPLICIT_LE: Final = b"1.2.840.10008.1.2.1"
IMPLICIT_LE: Final = b"1.2.840.10008.1.2"
PDU_NAMES: Final = {1: "A-ASSOCIATE-RQ", 2: "A-ASSOCIATE-AC", 3: "A-ASSOCIATE-RJ", 4: "P-DATA-TF",
                    5: "A-RELEASE-RQ", 6: "A-RELEASE-RP", 7: "A-ABORT"}  # fmt: skip


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def presentation_context(pc_id: int, abstract: bytes, syntaxes: list[bytes]) -> bytes:
    """Build a presentation context item (0x20) with its abstract and transfer syntax sub-items."""
    body = struct.pack(">BBBB", pc_id, 0, 0, 0) + _item(0x30, abstract)
    return _item(0x20, body + b"".join(_item(0x40, s) for s in syntaxes))


def user_information(max_length: int = 16384) -> bytes:
    """Build a user information item (0x50) with a maximum-length sub-item (0x51)."""
    return _item(0x50, _item(0x51, struct.pack(">L", max_length)))


def associate_rq(
    items: bytes | None = None, *, called: bytes = b"SPINEXR", calling: bytes = b"FUZZ"
) -> bytes:
    """Build an A-ASSOCIATE-RQ PDU (Verification and CR Storage proposed unless ``items``)."""
    if items is None:
        items = (
            _item(0x10, APPLICATION_CONTEXT)
            + presentation_context(1, VERIFICATION, [IMPLICIT_LE])
            + presentation_context(3, CR_STORAGE, [EXPLICIT_LE, IMPLICIT_LE])
            + user_information()
        )
    body = struct.pack(">HH", 1, 0) + called.ljust(16) + calling.ljust(16) + bytes(32) + items
    return struct.pack(">BBL", 1, 0, len(body)) + body


def echo_command(message_id: int = 1) -> bytes:
    """Build a C-ECHO-RQ command set (implicit VR little endian)."""
    uid = VERIFICATION + (b"\x00" if len(VERIFICATION) % 2 else b"")

    def el(elem: int, value: bytes) -> bytes:
        return struct.pack("<HHL", 0, elem, len(value)) + value

    rest = (
        el(0x0002, uid)
        + el(0x0100, struct.pack("<H", 0x0030))
        + el(0x0110, struct.pack("<H", message_id))
        + el(0x0800, struct.pack("<H", 0x0101))
    )
    return el(0x0000, struct.pack("<L", len(rest))) + rest


def p_data(pc_id: int, fragment: bytes, control: int = 0x03) -> bytes:
    """Build a P-DATA-TF PDU with one PDV (``control``: bit 0 command, bit 1 last fragment)."""
    pdv = struct.pack(">LBB", len(fragment) + 2, pc_id, control) + fragment
    return struct.pack(">BBL", 4, 0, len(pdv)) + pdv


def read_answer(sock: socket.socket, timeout: float) -> str:
    """Return the first thing the node answers: a PDU name, ``closed``, ``reset`` or ``silent``."""
    sock.settimeout(timeout)
    try:
        head = sock.recv(6)
    except TimeoutError:
        return "silent"
    except OSError:
        return "reset"
    if not head:
        return "closed"
    return PDU_NAMES.get(head[0], f"pdu-0x{head[0]:02X}")


def drain(sock: socket.socket, first: bytes = b"", timeout: float = 5.0) -> bytes:
    """Read one whole PDU (the header may already be in ``first``)."""
    sock.settimeout(timeout)
    data = first
    while len(data) < 6:
        chunk = sock.recv(6 - len(data))
        if not chunk:
            return data
        data += chunk
    (length,) = struct.unpack(">L", data[2:6])
    while len(data) < 6 + length:
        chunk = sock.recv(min(65536, 6 + length - len(data)))
        if not chunk:
            break
        data += chunk
    return data


# --------------------------------------------------------------------------- mutations


def _rq_wrong_pdu_length(rng: random.Random) -> bytes:
    pdu = associate_rq()
    length = rng.choice((0, 1, 10, 67, len(pdu) - 7, len(pdu) + 10, 2**31, 2**32 - 1))
    return pdu[:2] + struct.pack(">L", length) + pdu[6:]


def _rq_wrong_item_length(rng: random.Random) -> bytes:
    bad = rng.choice((0, 1, 3, 200, 0xFFFF))
    items = (
        _item(0x10, APPLICATION_CONTEXT)[:2] + struct.pack(">H", bad) + APPLICATION_CONTEXT
        if rng.random() < 0.5
        else _item(0x10, APPLICATION_CONTEXT)
    )
    pc = presentation_context(1, VERIFICATION, [IMPLICIT_LE])
    if rng.random() < 0.5:
        pc = pc[:2] + struct.pack(">H", bad) + pc[4:]
    return associate_rq(items + pc + user_information())


def _rq_unknown_items(rng: random.Random) -> bytes:
    kind = rng.choice((0x00, 0x11, 0x21, 0x30, 0x40, 0x51, 0x7F, 0xFF))
    items = _item(0x10, APPLICATION_CONTEXT) + _item(kind, rng.randbytes(rng.randint(0, 40)))
    return associate_rq(
        items + presentation_context(1, VERIFICATION, [IMPLICIT_LE]) + user_information()
    )


def _rq_context_ids(rng: random.Random) -> bytes:
    ids = rng.choice(([0], [2], [255], [1, 1], [256 - 1, 1], [4, 6, 8], list(range(1, 256, 2)) * 2))
    pcs = b"".join(presentation_context(i & 0xFF, VERIFICATION, [IMPLICIT_LE]) for i in ids)
    return associate_rq(_item(0x10, APPLICATION_CONTEXT) + pcs + user_information())


def _rq_odd_fields(rng: random.Random) -> bytes:
    choice = rng.randrange(6)
    if choice == 0:  # protocol version
        pdu = associate_rq()
        return pdu[:6] + struct.pack(">H", rng.choice((0, 2, 0xFFFF))) + pdu[8:]
    if choice == 1:  # no presentation context
        return associate_rq(_item(0x10, APPLICATION_CONTEXT) + user_information())
    if choice == 2:  # maximum length 0 or tiny
        items = _item(0x10, APPLICATION_CONTEXT) + presentation_context(
            1, VERIFICATION, [IMPLICIT_LE]
        )
        return associate_rq(items + user_information(rng.choice((0, 1, 7, 2**32 - 1))))
    if choice == 3:  # empty or binary AE titles
        return associate_rq(called=rng.choice((b"", b"\x00" * 16, b"\xff\xfe")), calling=b"")
    if choice == 4:  # no user information, empty syntaxes
        items = _item(0x10, b"") + presentation_context(1, b"", [b""])
        return associate_rq(items)
    return associate_rq() + rng.randbytes(rng.randint(1, 64))  # trailing garbage


def _rq_truncated(rng: random.Random) -> bytes:
    pdu = associate_rq()
    return pdu[: rng.randrange(1, len(pdu))]


RQ_MUTATIONS: Final[dict[str, Callable[[random.Random], bytes]]] = {
    "rq_wrong_pdu_length": _rq_wrong_pdu_length,
    "rq_wrong_item_length": _rq_wrong_item_length,
    "rq_unknown_items": _rq_unknown_items,
    "rq_context_ids": _rq_context_ids,
    "rq_odd_fields": _rq_odd_fields,
    "rq_truncated": _rq_truncated,
}
"""A-ASSOCIATE-RQ mutations, each returning the bytes to send on a fresh connection."""


def _pd_pdv_length(rng: random.Random) -> bytes:
    cmd = echo_command()
    pdu = p_data(1, cmd)
    bad = rng.choice((0, 1, 2, len(cmd) + 3, len(cmd) + 1000, 2**32 - 1))
    return pdu[:6] + struct.pack(">L", bad) + pdu[10:]


def _pd_pdu_length(rng: random.Random) -> bytes:
    pdu = p_data(1, echo_command())
    bad = rng.choice((0, 3, len(pdu) - 8, len(pdu) + 100, 2**31))
    return pdu[:2] + struct.pack(">L", bad) + pdu[6:]


def _pd_context_id(rng: random.Random) -> bytes:
    return p_data(rng.choice((0, 2, 5, 255)), echo_command())


def _pd_control(rng: random.Random) -> bytes:
    return p_data(1, echo_command(), control=rng.choice((0x00, 0x01, 0x02, 0xFF, 0x04)))


def _pd_garbage_command(rng: random.Random) -> bytes:
    cmd = bytearray(echo_command())
    for _ in range(rng.randint(1, 8)):
        cmd[rng.randrange(len(cmd))] = rng.getrandbits(8)
    return p_data(1, bytes(cmd))


def _pd_unexpected_pdu(rng: random.Random) -> bytes:
    kind = rng.choice((0x01, 0x02, 0x03, 0x06, 0x08, 0xFF))
    body = rng.randbytes(rng.randint(0, 80))
    return struct.pack(">BBL", kind, 0, len(body)) + body


def _pd_store_garbage(rng: random.Random) -> bytes:
    # A C-STORE-RQ command is not built here: a data set fragment with no command before it.
    return p_data(3, rng.randbytes(rng.randint(0, 300)), control=rng.choice((0x00, 0x02)))


PDATA_MUTATIONS: Final[dict[str, Callable[[random.Random], bytes]]] = {
    "pdata_pdv_length": _pd_pdv_length,
    "pdata_pdu_length": _pd_pdu_length,
    "pdata_context_id": _pd_context_id,
    "pdata_control": _pd_control,
    "pdata_garbage_command": _pd_garbage_command,
    "pdata_unexpected_pdu": _pd_unexpected_pdu,
    "pdata_store_garbage": _pd_store_garbage,
}
"""Mutations sent after a valid association is accepted."""


def send_raw(port: int, rng: random.Random, *, answer_timeout: float = 3.0) -> tuple[str, str]:
    """Send one mutated PDU (association request, or data after a valid association).

    Parameters
    ----------
    port : int
        The node's DICOM port (loopback).
    rng : random.Random
        Picks the mutation.
    answer_timeout : float
        Seconds to wait for the node's first answer.

    Returns
    -------
    tuple of str
        The mutation's name and the outcome (``pdu:<name>``, ``closed``, ``silent``...).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if rng.random() < 0.5:
            name = rng.choice(sorted(RQ_MUTATIONS))
            sock.sendall(RQ_MUTATIONS[name](rng))
            return name, "pdu:" + read_answer(sock, answer_timeout)
        sock.sendall(associate_rq())
        try:
            answer = drain(sock, b"", timeout=10)
        except OSError:
            answer = b""
        if not answer or answer[0] != 2:
            name = PDU_NAMES.get(answer[0], "?") if answer else "closed"
            return "pdata_setup", "setup:" + name
        if rng.random() < 0.15:  # abort mid-PDU: half a P-DATA-TF, then close
            pdu = p_data(1, echo_command())
            sock.sendall(pdu[: rng.randrange(1, len(pdu))])
            time.sleep(rng.random() * 0.05)
            return "abort_mid_pdu", "closed-by-us"
        name = rng.choice(sorted(PDATA_MUTATIONS))
        sock.sendall(PDATA_MUTATIONS[name](rng))
        return name, "pdu:" + read_answer(sock, answer_timeout)
