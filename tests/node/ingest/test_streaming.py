"""The fast ingest path: spool files hashed while written, C-STORE data streamed to the spool,
and instances that arrive together recorded in one transaction (group commit)."""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import socket
import threading
from pathlib import Path

import pydicom
import pytest
from blake3 import blake3
from ingest_support import Stack, build_stack, phantom_bytes
from pynetdicom import AE, _config
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation  # type: ignore[attr-defined]
from sqlalchemy import func, select

from spinexr.node.db.models import Instance, Study
from spinexr.node.dimse.scp import StoreSCP
from spinexr.node.dimse.transport import LimitedSocket
from spinexr.node.errors import IngestError
from spinexr.node.ingest import spoolwriter
from spinexr.node.ingest.header import read_header
from spinexr.node.ingest.recorder import Outcome, Recorder
from spinexr.node.ingest.spoolwriter import (
    BLOCK,
    CHUNK,
    CHUNK_ALONE,
    CHUNKS_IN_FLIGHT,
    HEAD,
    SpoolWriter,
)


def blake3_of(data: bytes) -> str:
    """The content hash the node records, computed independently."""
    return "blake3:" + blake3(data).hexdigest()


def dataset_bytes(path: Path) -> bytes:
    """What follows the Part-10 preamble and file meta group."""
    meta = pydicom.filereader.read_file_meta_info(path)
    return path.read_bytes()[132 + 12 + meta.FileMetaInformationGroupLength :]


def rows(stack: Stack) -> int:
    with stack.sessions() as s:
        return s.scalar(select(func.count()).select_from(Instance))


@pytest.mark.parametrize("background", [False, True])
@pytest.mark.parametrize(
    "size",
    [0, 1, BLOCK - 1, BLOCK, CHUNK_ALONE, CHUNK_ALONE + 1, CHUNK, CHUNK + 1, 2 * CHUNK + BLOCK + 7],
)
def test_spool_writer_file_ends_exactly(tmp_path: Path, background: bool, size: int) -> None:
    """Direct writes pad the last block: the file is cut back to its exact length."""
    data = os.urandom(size)
    writer = SpoolWriter(tmp_path / "e.part", background=background)
    for start in range(0, size, 5000):
        writer.write(data[start : start + 5000])
    pending = writer.finish(sync=True)
    pending.wait_written()
    spooled = pending.result()
    assert (tmp_path / "e.part").read_bytes() == data
    assert (spooled.size, spooled.content_hash) == (size, blake3_of(data))


def test_spool_writer_without_direct_io(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that refuses O_DIRECT (EINVAL) gets buffered writes, same result."""
    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & spoolwriter.O_DIRECT:
            real_open(path, flags & ~spoolwriter.O_DIRECT, *args)  # created, as Linux does
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(spoolwriter, "O_DIRECT", getattr(os, "O_DIRECT", 0o40000))
    monkeypatch.setattr(os, "open", no_direct)
    data = os.urandom(CHUNK + 777)
    writer = SpoolWriter(tmp_path / "f.part", background=True)
    assert not writer.direct
    writer.write(data)
    spooled = writer.finish(sync=True).result()
    assert (tmp_path / "f.part").read_bytes() == data
    assert spooled.content_hash == blake3_of(data)


def test_spool_writer_failed_write_is_reported_and_nothing_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed chunk write (disk full) surfaces to the receiver; the file and helper go."""

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    before = threading.active_count()
    writer = SpoolWriter(tmp_path / "g.part", background=True)
    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(OSError) as raised:
        for _ in range(CHUNKS_IN_FLIGHT + 2):  # the error shows at a later hand-over
            writer.write(bytes(CHUNK))
    assert raised.value.errno == errno.ENOSPC
    writer.discard()
    assert not (tmp_path / "g.part").exists()
    assert threading.active_count() == before

    writer = SpoolWriter(tmp_path / "h.part", background=True)
    writer.write(b"x" * 10)
    pending = writer.finish(sync=True)
    with pytest.raises(OSError):
        pending.wait_written()
    with pytest.raises(OSError):
        pending.result()
    pending.discard()
    assert not (tmp_path / "h.part").exists()


@pytest.mark.parametrize("background", [False, True])
def test_spool_writer_hash_size_and_sync(tmp_path: Path, background: bool) -> None:
    data = os.urandom(3 * CHUNK + 12345)
    writer = SpoolWriter(tmp_path / "a.part", background=background)
    # Pieces of odd sizes, some larger than a hashing chunk.
    cuts = [0, 1, 700, CHUNK + 3, 2 * CHUNK + 5000, len(data)]
    for a, b in itertools.pairwise(cuts):
        writer.write(memoryview(data)[a:b])
    spooled = writer.finish(sync=True).result()
    assert spooled.content_hash == blake3_of(data)
    assert spooled.size == len(data) and spooled.synced
    assert (tmp_path / "a.part").read_bytes() == data


def test_spool_writer_discard_stops_the_helper_and_deletes(tmp_path: Path) -> None:
    before = threading.active_count()
    writer = SpoolWriter(tmp_path / "b.part", background=True)
    writer.write(os.urandom(CHUNK + 1))
    writer.discard()
    assert not (tmp_path / "b.part").exists()
    assert threading.active_count() == before
    with pytest.raises(ValueError):
        writer.write(b"x")


def test_concurrent_arrivals_share_commits_and_all_are_recorded(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [phantom_bytes(100 + i)[0] for i in range(8)]
    twin = files[0]  # sent twice at once: one row, one duplicate
    groups: list[int] = []
    original = Recorder._transaction

    def slow_transaction(self, group):
        groups.append(len(group))
        threading.Event().wait(0.2)  # others arrive meanwhile and wait for the next commit
        return original(self, group)

    monkeypatch.setattr(Recorder, "_transaction", slow_transaction)
    results: list = [None] * (len(files) + 1)

    def send(i: int, data: bytes) -> None:
        results[i] = stack.ingest.ingest([data], calling_ae="PACS", source="dimse")

    threads = [threading.Thread(target=send, args=(i, d)) for i, d in enumerate([*files, twin])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    outcomes = sorted(r.outcome for r in results)
    assert outcomes.count(Outcome.DUPLICATE) == 1
    assert outcomes.count(Outcome.STORED) == len(files)
    assert sum(groups) == len(files) + 1 and max(groups) > 1, groups
    with stack.sessions() as s:
        instances = s.scalars(select(Instance)).all()
        assert len(instances) == len(files)
        assert s.scalar(select(func.count()).select_from(Study)) == len(files)
        for inst in instances:
            stored = (stack.spool.root / inst.path).read_bytes()
            assert blake3_of(stored) == inst.content_hash
    assert list(stack.spool.tmp.iterdir()) == []


def test_a_failed_group_fails_every_member_and_keeps_nothing(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(moves):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stack.spool, "place_all", broken)
    data, _ = phantom_bytes(130)
    with pytest.raises(OSError):
        stack.ingest.ingest([data], calling_ae="PACS", source="dimse")
    assert rows(stack) == 0
    assert list(stack.spool.tmp.iterdir()) == []
    monkeypatch.undo()
    again = stack.ingest.ingest([data], calling_ae="PACS", source="dimse")
    assert again.outcome is Outcome.STORED and rows(stack) == 1


@pytest.mark.integration
def test_streamed_c_store_is_byte_exact_and_an_oversized_one_is_refused_mid_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    small, small_ds = phantom_bytes(140, size=(256, 192))
    big, _ = phantom_bytes(141, size=(1024, 768))
    limit = (len(small) + len(big)) // 2
    stack = build_stack(tmp_path, dicom={"max_dataset_bytes": limit})
    streams: list[object] = []
    open_stream = StoreSCP._open_stream

    def counting(self, head):
        streams.append(stream := open_stream(self, head))
        return stream

    monkeypatch.setattr(StoreSCP, "_open_stream", counting)
    stack.scp = StoreSCP(stack.settings, stack.ingest)
    stack.scp.start()
    try:
        (tmp_path / "small.dcm").write_bytes(small)
        (tmp_path / "big.dcm").write_bytes(big)
        monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
        ae = AE(ae_title="PACS")
        ts = str(small_ds.file_meta.TransferSyntaxUID)
        ae.add_requested_context(DigitalXRayImageStorageForPresentation, [ts])
        ae.maximum_pdu_size = 16384  # many data PDUs per instance
        assoc = ae.associate("127.0.0.1", stack.port, ae_title="SPINEXR")
        assert assoc.is_established
        try:
            status_big = assoc.send_c_store(tmp_path / "big.dcm")
            status_small = assoc.send_c_store(tmp_path / "small.dcm")
        finally:
            assoc.release()
    finally:
        stack.scp.stop()
    assert len(streams) == 2  # both data sets went straight to the spool
    assert status_big.Status == 0xA701
    assert status_small.Status == 0x0000
    with stack.sessions() as s:
        inst = s.scalars(select(Instance)).one()
    stored = (stack.spool.root / inst.path).read_bytes()
    assert blake3_of(stored) == inst.content_hash and inst.size_bytes == len(stored)
    got = pydicom.dcmread(stack.spool.root / inst.path)
    assert got.SOPInstanceUID == small_ds.SOPInstanceUID
    assert got.PixelData == small_ds.PixelData
    # The data set bytes are exactly the sender's (only the file meta is ours).
    assert dataset_bytes(stack.spool.root / inst.path) == dataset_bytes(tmp_path / "small.dcm")
    assert list(stack.spool.tmp.iterdir()) == []


def test_header_is_read_from_memory_and_from_the_file_only_past_the_head(tmp_path: Path) -> None:
    """The header parsed from the spool writer's head equals the one read from the file."""
    data = phantom_bytes(7)[0]
    path = tmp_path / "p.dcm"
    path.write_bytes(data)
    limits = {"max_sequence_depth": 8, "max_decompressed_bytes": 2**30}
    whole = read_header(path, **limits)
    opened: list[int] = []
    for head_len in (len(data), 400, 140):  # all of it; the header runs past the head
        got = read_header(
            path,
            **limits,
            head=data[:head_len],
            size=len(data),
            before_file=lambda: opened.append(1),
        )
        assert got == whole
    assert len(opened) == 2  # the file is read only when the head is not enough

    cut = tmp_path / "cut.dcm"  # truncated inside the header: refused the same way
    cut.write_bytes(data[:600])
    reasons = []
    for head in (b"", data[:300]):
        with pytest.raises(IngestError) as refused:
            read_header(cut, **limits, head=head, size=600)
        reasons.append(refused.value.reason)
    assert reasons[0] == reasons[1] and reasons[0] in {"unparseable", "missing_uid", "truncated"}


def test_spool_writer_keeps_the_head_of_the_file(tmp_path: Path) -> None:
    data = os.urandom(CHUNK + 10)
    writer = SpoolWriter(tmp_path / "h.part", background=True)
    writer.write(data)
    pending = writer.finish(sync=True)
    assert pending.head == data[:HEAD]
    assert pending.result().head == data[:HEAD]
    small = SpoolWriter(tmp_path / "s.part")
    small.write(b"abc")
    assert small.close().head == b"abc"


def test_spool_writers_at_once_hash_in_their_helpers_and_stay_exact(tmp_path: Path) -> None:
    """A file received alone is hashed by its receiver; one among several by its helper, in
    larger chunks."""
    datas = [os.urandom(2 * CHUNK + 999), os.urandom(3 * CHUNK + 5)]
    first = SpoolWriter(tmp_path / "1.part", background=True)
    second = SpoolWriter(tmp_path / "2.part", background=True)
    assert first._hash_here and not second._hash_here
    # Short hand-overs for a file alone (less left after its last byte), longer ones among
    # several (fewer thread switches).
    assert (first._chunk_size, second._chunk_size) == (CHUNK_ALONE, CHUNK)
    for start in range(0, 3 * CHUNK + 5, 70_000):  # interleaved, as two associations
        first.write(datas[0][start : start + 70_000])
        second.write(datas[1][start : start + 70_000])
    for writer, data, name in ((first, datas[0], "1.part"), (second, datas[1], "2.part")):
        spooled = writer.finish(sync=True).result()
        assert spooled.content_hash == blake3_of(data)
        assert (tmp_path / name).read_bytes() == data
    assert spoolwriter._receiving.count == 0
    third = SpoolWriter(tmp_path / "3.part", background=True)
    assert third._hash_here  # alone again
    third.discard()
    assert spoolwriter._receiving.count == 0


def test_socket_read_buffer_serves_every_reader_and_loses_nothing() -> None:
    """Bytes read ahead for the streaming path are what pynetdicom's reads get next."""
    a, b = socket.socketpair()
    sock = object.__new__(LimitedSocket)  # as the SCP does: the class of a live socket
    sock.socket = a
    sock.max_pdu_read = 4096
    try:
        payload = os.urandom(10_000)
        b.sendall(payload)
        head = sock.fill(6)
        assert head is not None and bytes(head) == payload[:6]
        assert sock.buffered >= 6  # read ahead, nothing taken yet
        sock.consume(6)
        assert bytes(sock.recv(3000)) == payload[6:3006]  # pynetdicom's path
        view = memoryview(bytearray(6994))
        assert sock.read_into(view) == 6994 and bytes(view) == payload[3006:]
        assert sock.buffered == 0 and not sock.has_buffered_data()
        b.sendall(b"xyz")
        b.close()
        assert sock.fill(10) is None  # closed first: what came stays buffered
        view = memoryview(bytearray(10))
        assert sock.read_into(view) == 3 and bytes(view[:3]) == b"xyz"  # a short read
        with pytest.raises(OSError):
            sock.recv(5000)  # larger than the PDU limit: refused
    finally:
        a.close()


def test_socket_reads_many_waiting_pdus_at_once() -> None:
    """A data set's PDUs that have arrived cost a few large reads, not one or two each."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2**22)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2**22)
    sock = object.__new__(LimitedSocket)
    sock.socket = a
    sock.max_pdu_read = 16384 + 1024
    reads = 0
    real_refill = LimitedSocket._refill

    def counting_refill(self: LimitedSocket) -> bool:
        nonlocal reads
        reads += 1
        return real_refill(self)

    try:
        # As many 16 KiB PDUs as surely wait in the socket at once (up to 1 MiB).
        room = b.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2
        count = min(64, room // (16384 + 6))
        assert count >= 8
        pdus = [os.urandom(16384 + 6) for _ in range(count)]
        sender = threading.Thread(target=b.sendall, args=(b"".join(pdus),))
        sender.start()
        sender.join(timeout=10)  # all of it waits in the socket before the first read
        assert not sender.is_alive()
        sock._refill = counting_refill.__get__(sock)  # type: ignore[method-assign]
        for pdu in pdus:
            got = sock.fill(len(pdu))
            assert got is not None and bytes(got) == pdu
            sock.consume(len(pdu))
        assert reads <= max(2, count // 8)  # (two PDUs per read before)
    finally:
        a.close()
        b.close()


def test_spool_writer_falls_back_when_a_direct_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EINVAL from a direct write (alignment stricter than ours): the rest goes buffered."""
    real_pwrite = os.pwrite
    refused: list[int] = []

    def strict(fd, data, offset):
        if not refused and fcntl.fcntl(fd, fcntl.F_GETFL) & spoolwriter.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", strict)
    data = os.urandom(2 * CHUNK + 333)
    writer = SpoolWriter(tmp_path / "d.part", background=True)
    writer.write(data)
    spooled = writer.finish(sync=True).result()
    assert (tmp_path / "d.part").read_bytes() == data
    assert spooled.content_hash == blake3_of(data)
    if spoolwriter.O_DIRECT and writer_was_direct(tmp_path):
        assert refused == [0]


def writer_was_direct(folder: Path) -> bool:
    probe = SpoolWriter(folder / "probe.part")
    try:
        return probe.direct
    finally:
        probe.discard()
