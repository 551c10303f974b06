"""Ingest from several processes at once: one database, one spool, one association limit."""

from __future__ import annotations

import io
import multiprocessing
import time
from pathlib import Path

import pydicom
import pytest
from blake3 import blake3
from ingest_support import Stack, build_stack, phantom_bytes, record_all
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from spinexr.node.db.models import Instance
from spinexr.node.dimse.scp import StoreSCP
from spinexr.node.ingest.service import Outcome

PROCESSES = 4


def variant(data: bytes, n: int) -> bytes:
    """The same instance (same UIDs) with different bytes."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.ImageComments = f"variant {n}"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_processes_recording_together_keep_duplicates_and_versions_right(stack: Stack) -> None:
    """Same bytes from every process: one row. Different bytes under one SOP Instance UID:
    versions 1..N, each once (the unique (SOP Instance UID, version) constraint and the
    recorder's retry hold between processes)."""
    same = [phantom_bytes(200 + i)[0] for i in range(3)]
    differing = [phantom_bytes(210 + i)[0] for i in range(3)]
    per_process = [[*same, *(variant(d, p) for d in differing)] for p in range(PROCESSES)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(PROCESSES) as pool:
        start = manager.Event()
        pending = [
            pool.apply_async(record_all, (stack.settings, files, start)) for files in per_process
        ]
        time.sleep(0.5)
        start.set()  # all at once (each waits for it once its engine and service are ready)
        outcomes = [r.get(timeout=120) for r in pending]
    for got in outcomes:
        assert set(got[: len(same)]) <= {Outcome.STORED.value, Outcome.DUPLICATE.value}
        assert set(got[len(same) :]) <= {Outcome.STORED.value, Outcome.NEW_VERSION.value}
    firsts = [got[i] for got in outcomes for i in range(len(same))]
    assert firsts.count(Outcome.STORED.value) == len(same)  # each stored once, by someone
    with stack.sessions() as s:
        rows = s.scalars(select(Instance)).all()
    by_uid: dict[str, list[Instance]] = {}
    for row in rows:
        by_uid.setdefault(row.sop_instance_uid, []).append(row)
    for data in same:
        uid = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
        assert [r.version for r in by_uid[uid]] == [1]
    for data in differing:
        uid = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
        assert sorted(r.version for r in by_uid[uid]) == list(range(1, PROCESSES + 1))
        assert len({r.content_hash for r in by_uid[uid]}) == PROCESSES
    for row in rows:
        stored = (stack.spool.root / row.path).read_bytes()
        assert "blake3:" + blake3(stored).hexdigest() == row.content_hash
    assert list(stack.spool.tmp.iterdir()) == []


@pytest.mark.integration
def test_the_association_limit_counts_every_process(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    st = build_stack(tmp_path, dicom={"max_associations": 2})
    scp = StoreSCP(st.settings)
    scp.start()
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    try:
        first = ae.associate("127.0.0.1", st.port, ae_title="SPINEXR")
        second = ae.associate("127.0.0.1", st.port, ae_title="SPINEXR")
        assert first.is_established and second.is_established  # two processes
        third = ae.associate("127.0.0.1", st.port, ae_title="SPINEXR")
        assert third.is_rejected
        rejection = third.acceptor.primitive
        # transient, service-provider, local limit exceeded (PS3.8 9.3.4)
        assert (rejection.result, rejection.result_source, rejection.diagnostic) == (2, 3, 2)
        first.release()
        deadline = time.monotonic() + 10
        while True:  # the listener counts the first one's process as ended once it exits
            again = ae.associate("127.0.0.1", st.port, ae_title="SPINEXR")
            if again.is_established or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert again.is_established
        assert again.send_c_echo().Status == 0
        again.release()
        second.release()
    finally:
        scp.stop()
