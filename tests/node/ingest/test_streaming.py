"""The ingest path: spool files hashed while written, C-STORE data written to the spool as it
arrives (and refused mid-stream), and instances that arrive together recorded in one
transaction (group commit)."""

from __future__ import annotations

import errno
import itertools
import os
import threading
import time
from pathlib import Path

import pydicom
import pytest
from blake3 import blake3
from ingest_support import Stack, build_stack, phantom_bytes
from pynetdicom import AE, _config, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation  # type: ignore[attr-defined]
from sqlalchemy import func, select

from spinexr.node.db.models import Instance, Study
from spinexr.node.dimse.scp import StoreSCP
from spinexr.node.errors import IngestError
from spinexr.node.ingest.header import read_header
from spinexr.node.ingest.recorder import Outcome, Recorder
from spinexr.node.ingest.spoolwriter import HEAD, SpoolWriter

# Sizes the writer's earlier versions cut files at (direct-I/O blocks, 1 and 4 MiB chunks).
BLOCK, CHUNK_ALONE, CHUNK = 4096, 2**20, 2**22


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


@pytest.mark.parametrize(
    "size",
    [0, 1, BLOCK - 1, BLOCK, CHUNK_ALONE, CHUNK_ALONE + 1, CHUNK, CHUNK + 1, 2 * CHUNK + BLOCK + 7],
)
def test_spool_writer_file_ends_exactly(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    writer = SpoolWriter(tmp_path / "e.part")
    for start in range(0, size, 5000):
        writer.write(data[start : start + 5000])
    spooled = writer.close(sync=True)
    assert (tmp_path / "e.part").read_bytes() == data
    assert (spooled.size, spooled.content_hash) == (size, blake3_of(data))


def test_spool_writer_failed_write_is_reported_and_nothing_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed write (disk full) surfaces to the writer's caller; discarding leaves nothing."""

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    before = threading.active_count()
    writer = SpoolWriter(tmp_path / "g.part")
    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError) as raised:
        writer.write(bytes(CHUNK))
    assert raised.value.errno == errno.ENOSPC
    writer.discard()
    assert not (tmp_path / "g.part").exists()
    assert threading.active_count() == before


def test_spool_writer_hash_size_and_sync(tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK + 12345)
    writer = SpoolWriter(tmp_path / "a.part")
    # Pieces of odd sizes, some larger than a hashing chunk.
    cuts = [0, 1, 700, CHUNK + 3, 2 * CHUNK + 5000, len(data)]
    for a, b in itertools.pairwise(cuts):
        writer.write(memoryview(data)[a:b])
    spooled = writer.close(sync=True)
    assert spooled.content_hash == blake3_of(data)
    assert spooled.size == len(data) and spooled.synced
    assert (tmp_path / "a.part").read_bytes() == data


def test_spool_writer_discard_deletes(tmp_path: Path) -> None:
    before = threading.active_count()
    writer = SpoolWriter(tmp_path / "b.part")
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


class SpoolWatch:
    """What the SCP's temporary folder holds while this process sends (``EVT_PDU_SENT``).

    Once the first data PDU of a C-STORE is sent, it waits for the receiver's file to appear
    (the receiver creates it from the command alone); after each data PDU it notes the
    blocks the files there take on disk.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: set[str] = set()
        self.most_allocated = 0
        self._new_message = False

    def _present(self) -> list[Path]:
        return [p for p in self.folder.rglob("*") if p.is_file()]

    def on_sent(self, event: evt.Event) -> None:
        if not isinstance(event.pdu, P_DATA_TF):
            return
        controls = [
            item.presentation_data_value[0] for item in event.pdu.presentation_data_value_items
        ]
        if any(c & 0x01 for c in controls):
            self._new_message = True  # a command: its data set comes next
            return
        found = self._present()
        if self._new_message:
            deadline = time.monotonic() + 10
            while not {p.name for p in found} - self.files and time.monotonic() < deadline:
                time.sleep(0.002)
                found = self._present()
            self._new_message = False
        for path in found:
            try:
                allocated = path.stat().st_blocks * 512
            except FileNotFoundError:
                continue
            self.files.add(path.name)
            self.most_allocated = max(self.most_allocated, allocated)


@pytest.mark.integration
def test_streamed_c_store_is_byte_exact_and_an_oversized_one_is_refused_mid_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    small, small_ds = phantom_bytes(140, size=(256, 192))
    big, _ = phantom_bytes(141, size=(1024, 768))
    limit = (len(small) + len(big)) // 2
    stack = build_stack(tmp_path, dicom={"max_dataset_bytes": limit})
    watch = SpoolWatch(stack.spool.tmp)
    stack.scp = StoreSCP(stack.settings)
    stack.scp.start()
    try:
        (tmp_path / "small.dcm").write_bytes(small)
        (tmp_path / "big.dcm").write_bytes(big)
        monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
        ae = AE(ae_title="PACS")
        ts = str(small_ds.file_meta.TransferSyntaxUID)
        ae.add_requested_context(DigitalXRayImageStorageForPresentation, [ts])
        ae.maximum_pdu_size = 16384  # many data PDUs per instance
        assoc = ae.associate(
            "127.0.0.1",
            stack.port,
            ae_title="SPINEXR",
            evt_handlers=[(evt.EVT_PDU_SENT, watch.on_sent)],
        )
        assert assoc.is_established
        try:
            status_big = assoc.send_c_store(tmp_path / "big.dcm")
            status_small = assoc.send_c_store(tmp_path / "small.dcm")
        finally:
            assoc.release()
    finally:
        stack.scp.stop()
    assert len(watch.files) == 2  # both data sets went straight to the spool
    # The refused one never held much more than the limit on disk (one 16 KiB PDU more).
    assert watch.most_allocated <= limit + 2**16, (watch.most_allocated, limit)
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
    writer = SpoolWriter(tmp_path / "h.part")
    writer.write(data)
    assert writer.close(sync=True).head == data[:HEAD]
    small = SpoolWriter(tmp_path / "s.part")
    small.write(b"abc")
    assert small.close().head == b"abc"
