"""`serve` stops cleanly within 3 s of SIGTERM, with an association open, storing or idle.

A live ``spinexr-node serve`` (its DICOM listener, one process per association, and the
embedded worker) receives C-STOREs over one association from a pynetdicom peer; SIGTERM comes
while they flow (or while the association is open and idle). The storing case once failed 3
runs in 10: the node aborted while a data set was arriving, and the peer, busy sending, met a
closed connection before it read the A-ABORT. Measured: the time from the signal to the exit of
``serve`` and its exit code. Checked: the peer received an A-ABORT PDU (not a bare closed
connection), every instance the peer saw acknowledged (0x0000) is in the database (the commit
in flight was finished, nothing acknowledged is lost), and no process of the node is left.
"""

from __future__ import annotations

import copy
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from ingest_support import phantom_bytes
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    DigitalXRayImageStorageForPresentation,  # type: ignore[attr-defined]
    Verification,  # type: ignore[attr-defined]
)
from sqlalchemy import select
from testsupport import NodeProcess, make_node

from spinexr.node.db.engine import make_engine, make_session_factory
from spinexr.node.db.models import Instance

pytestmark = pytest.mark.integration

LIMIT_SECONDS = 3.0


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            text = Path(f"/proc/{current}/task/{current}/children").read_text()
        except OSError:
            continue
        for child in map(int, text.split()):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.mark.parametrize("storing", [True, False], ids=["storing", "idle"])
def test_sigterm_stops_serve_within_3_s_aborting_the_association(
    tmp_path: Path, storing: bool
) -> None:
    """The peer reads the A-ABORT whether it was sending a data set or waiting idle."""
    _, first = phantom_bytes(0)
    datasets = []
    for _ in range(200 if storing else 0):
        ds = copy.deepcopy(first)
        ds.SOPInstanceUID = generate_uid()
        datasets.append(ds)
    node = make_node(tmp_path).start()
    try:
        _stop(node, datasets)
    finally:
        node.kill()


def _stop(node: NodeProcess, datasets: list[Any]) -> None:
    assert node.proc is not None
    received: list[str] = []
    acknowledged: list[str] = []
    stop_sending = threading.Event()

    def on_pdu(event: Any) -> None:
        received.append(type(event.pdu).__name__)

    ae = AE(ae_title="PEER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    ae.add_requested_context(DigitalXRayImageStorageForPresentation)
    assoc = ae.associate(
        "127.0.0.1",
        node.dicom_port,
        ae_title="SPINEXR",
        evt_handlers=[(evt.EVT_PDU_RECV, on_pdu)],
    )
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0

    def send() -> None:
        for ds in datasets:
            if stop_sending.is_set() or not assoc.is_established:
                return
            status = assoc.send_c_store(ds)
            if status and status.Status == 0:
                acknowledged.append(str(ds.SOPInstanceUID))

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    deadline = time.monotonic() + 30
    wanted = min(5, len(datasets))
    while len(acknowledged) < wanted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(acknowledged) >= wanted, node.log()[-3000:]
    processes = _descendants(node.proc.pid)
    assert len(processes) >= 3  # the listener, the association, the worker

    start = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    code = node.proc.wait(timeout=30)
    elapsed = time.monotonic() - start
    stop_sending.set()
    sender.join(timeout=10)
    log = node.log()
    print(f"serve stopped {elapsed:.2f} s after SIGTERM (exit code {code})")

    assert code == 0, log[-3000:]
    assert elapsed <= LIMIT_SECONDS, f"{elapsed:.2f} s\n{log[-3000:]}"
    assert "A_ABORT_RQ" in received, received[-5:]
    assert assoc.is_aborted
    assert not [pid for pid in processes if _alive(pid)], "node processes left behind"
    assert "killing" not in log and "killed" not in log, log[-3000:]
    assert "Network timeout reached" not in log, log[-3000:]
    if datasets:
        assert "A-ABORT in place of the answer to C-STORE" in log, log[-3000:]

    engine = make_engine(f"sqlite:///{node.data_dir.resolve()}/spinexr.db")
    try:
        with make_session_factory(engine)() as session:
            stored = set(session.scalars(select(Instance.sop_instance_uid)))
    finally:
        engine.dispose()
    assert set(acknowledged) <= stored, set(acknowledged) - stored
