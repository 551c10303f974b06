"""Crash safety of the SCP: SIGKILL at random moments while storescu sends 200 instances.

Acceptance criterion: after restart, every instance that was acknowledged with 0x0000 is on
disk and in the database (zero lost), and the spool holds no half-written files.

Each round starts the node, starts ``storescu -v`` on the instances not yet acknowledged and
SIGKILLs the node at a random moment: after a random number of store responses (0-40) plus
a random 0-25 ms, so the kill lands anywhere in the ingest path (association set-up, receiving
PDUs, header check, fsync, rename, database commit, sending the response) whatever the
machine's speed. storescu's verbose log says, file by file, whether a response with status
Success (0x0000) came back; only those files count as acknowledged. The next round re-sends
the others, until all 200 are acknowledged.
"""

from __future__ import annotations

import hashlib
import random
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from blake3 import blake3
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session
from testsupport import NodeProcess, free_port, make_node, require_tool

from spinexr.node.db.engine import make_engine
from spinexr.node.db.models import Instance, Study
from spinexr.training.phantoms import make_phantom_image, write

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_INSTANCES = 200
N_STUDIES = 8
MAX_ROUNDS = 30
MIN_MID_TRANSFER_KILLS = 5
SEED = 20240611

SENDING = re.compile(r"Sending file: (.+?)\s*$")
RESPONSE = re.compile(r"Received Store Response \((.*)\)")


@dataclass(frozen=True)
class Source:
    """One instance as sent: its file and what must come back."""

    path: Path
    sop_uid: str
    study_uid: str
    pixel_sha256: str


def make_instances(folder: Path) -> dict[Path, Source]:
    """Write N_INSTANCES DX files: a few rendered phantoms, each re-used with new UIDs."""
    folder.mkdir()
    bases = [
        make_phantom_image(seed, sop_class="DX", size=size, view=view)[0]
        for seed, size, view in [
            (1, (256, 256), "AP"),
            (2, "small", "LAT"),
            (3, (256, 256), "LAT"),
            (4, "small", "AP"),
        ]
    ]
    studies = [generate_uid(entropy_srcs=[f"crash-study-{SEED}-{i}"]) for i in range(N_STUDIES)]
    sources: dict[Path, Source] = {}
    for i in range(N_INSTANCES):
        ds = bases[i % len(bases)]
        study = studies[i % N_STUDIES]
        sop = generate_uid(entropy_srcs=[f"crash-sop-{SEED}-{i}"])
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study, "series"])
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.InstanceNumber = i // N_STUDIES + 1
        path = (folder / f"{i:03d}.dcm").resolve()
        write(ds, path)
        sources[path] = Source(path, sop, study, hashlib.sha256(ds.PixelData).hexdigest())
    return sources


def parse_storescu(log: str) -> tuple[set[Path], int, list[str]]:
    """Files answered with Success, files whose sending started, non-success responses.

    storescu stores one file at a time: "Sending file: F" and then, unless the connection
    broke, one "Received Store Response (S)" for F. Only S == "Success" (0x0000) counts.
    """
    acked: set[Path] = set()
    started = 0
    refused: list[str] = []
    current: Path | None = None
    for line in log.splitlines():
        if m := SENDING.search(line):
            current = Path(m[1])
            started += 1
        elif m := RESPONSE.search(line):
            assert current is not None, f"store response without a file:\n{log}"
            if m[1] == "Success":
                acked.add(current)
            else:
                refused.append(f"{current}: {m[1]}")
            current = None
    return acked, started, refused


def count_responses(log_path: Path) -> int:
    try:
        return log_path.read_text(errors="replace").count("Received Store Response")
    except FileNotFoundError:
        return 0


def spool_state(node: NodeProcess) -> tuple[list[Path], set[str]]:
    """Files in the spool's temporary folder, and the relative paths of placed files."""
    spool = node.data_dir / "spool"
    partial = list((spool / ".incoming").iterdir())
    placed = {str(p.relative_to(spool)) for p in spool.rglob("*.dcm") if ".incoming" not in p.parts}
    return partial, placed


def check_complete(path: Path) -> None:
    """Fail unless ``path`` is a whole DICOM file (header and every pixel)."""
    ds = pydicom.dcmread(path)
    expected = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
    assert len(ds.PixelData) == expected, f"{path}: truncated pixel data"
    assert ds.pixel_array.shape == (ds.Rows, ds.Columns), f"{path} does not decode"


def db_instances(node: NodeProcess) -> tuple[list[Instance], set[str]]:
    """Instance rows and study UIDs, read while the node is down."""
    engine = make_engine(f"sqlite:///{node.data_dir / 'spinexr.db'}")
    try:
        with Session(engine) as session:
            rows = list(session.scalars(select(Instance)).all())
            studies = set(session.scalars(select(Study.study_instance_uid)).all())
    finally:
        engine.dispose()
    return rows, studies


def start(node: NodeProcess) -> None:
    """Start the node; if a port was taken while it was down, move to free ones once."""
    before = len(node.log())
    try:
        node.start()
    except AssertionError:
        node.kill()
        if "address already in use" not in node.log()[before:].lower():
            raise
        node.dicom_port, node.http_port = free_port(), free_port()
        node.env.update(
            SPINEXR_DICOM__PORT=str(node.dicom_port), SPINEXR_HTTP__PORT=str(node.http_port)
        )
        node.start()


def run_round(
    storescu: str, node: NodeProcess, files: list[Path], rng: random.Random, log_path: Path
) -> tuple[int, bool]:
    """Send ``files``, SIGKILL the node at a random moment; storescu's exit code, killed."""
    after = rng.randint(0, 40)
    jitter = rng.uniform(0.0, 0.025)
    with open(log_path, "wb") as err:
        proc = subprocess.Popen(
            [
                storescu,
                "-v",
                "-aec",
                "SPINEXR",
                "127.0.0.1",
                str(node.dicom_port),
                *map(str, files),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        killed = False
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if count_responses(log_path) >= after:
                time.sleep(jitter)
                killed = proc.poll() is None
                node.kill()
                break
            time.sleep(0.001)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"storescu hung after the node was killed:\n{log_path.read_text()}")
    node.kill()  # whatever happened above, this round's node is gone
    return code, killed


def test_sigkill_during_storescu_loses_no_acknowledged_instance(tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    t0 = time.monotonic()
    sources = make_instances(tmp_path / "in")
    generated_s = time.monotonic() - t0
    rng = random.Random(SEED)
    node = make_node(tmp_path, SPINEXR_STUDY__COMPLETION_SECONDS="3600")

    acked: set[Path] = set()
    log_path = tmp_path / "storescu-00.log"
    spool = node.data_dir / "spool"
    checked: dict[str, tuple[int, int]] = {}
    rounds = mid_transfer_kills = partials_seen = orphans_seen = 0
    start_s = send_s = 0.0
    while len(acked) < N_INSTANCES:
        rounds += 1
        assert rounds <= MAX_ROUNDS, (
            f"{len(acked)}/{N_INSTANCES} acknowledged after {MAX_ROUNDS} rounds; "
            f"last storescu log:\n{log_path.read_text(errors='replace')}\n"
            f"node log:\n{node.log()[-4000:]}"
        )
        remaining = [p for p in sources if p not in acked]
        t = time.monotonic()
        start(node)
        start_s += time.monotonic() - t
        log_path = tmp_path / f"storescu-{rounds:02d}.log"
        t = time.monotonic()
        code, killed = run_round(storescu, node, remaining, rng, log_path)
        send_s += time.monotonic() - t
        log = log_path.read_text(errors="replace")
        round_acked, started, refused = parse_storescu(log)
        assert not refused, f"the node refused instances: {refused}\nnode log:\n{node.log()}"
        assert round_acked <= set(remaining)
        if code == 0:
            assert round_acked == set(remaining), f"storescu exited 0 without all acks:\n{log}"
        elif killed and started:
            mid_transfer_kills += 1
        acked |= round_acked

        # Between the kill and the restart: what a crash leaves behind.
        partial, placed = spool_state(node)
        rows, _ = db_instances(node)
        partials_seen += len(partial)
        orphans_seen += len(placed - {r.path for r in rows})
        for rel in sorted(placed):
            st = (spool / rel).stat()
            if checked.get(rel) != (st.st_size, st.st_mtime_ns):
                check_complete(spool / rel)  # no half-written file outside .incoming
                checked[rel] = (st.st_size, st.st_mtime_ns)
        in_db = {r.sop_instance_uid for r in rows}
        lost = [str(p) for p in acked if sources[p].sop_uid not in in_db]
        assert not lost, (
            f"{len(lost)} acknowledged instance(s) not in the database after a kill: {lost[:5]}"
        )

    # Final restart: start-up clean-up runs; then stop cleanly and look at everything.
    start(node)
    assert node.stop() == 0, node.log()[-4000:]
    partial, placed = spool_state(node)
    rows, study_rows = db_instances(node)

    assert partial == [], f"spool/.incoming not empty after restart: {partial}"
    by_uid: dict[str, list[Instance]] = {}
    for r in rows:
        by_uid.setdefault(r.sop_instance_uid, []).append(r)
    sent_uids = {s.sop_uid for s in sources.values()}
    assert set(by_uid) <= sent_uids, "rows for instances that were never sent"
    for path in acked:
        src = sources[path]
        versions = by_uid.get(src.sop_uid, [])
        assert len(versions) == 1, f"{src.sop_uid}: {len(versions)} rows (lost or re-versioned)"
        row = versions[0]
        assert row.version == 1
        stored = spool / row.path
        assert stored.is_file(), f"{src.sop_uid}: {stored} missing"
        data = stored.read_bytes()
        assert len(data) == row.size_bytes, f"{stored}: size differs from the database"
        digest = "blake3:" + blake3(data).hexdigest()
        assert digest == row.content_hash, f"{stored}: content hash differs"
        check_complete(stored)
        ds = pydicom.dcmread(stored)
        assert ds.SOPInstanceUID == src.sop_uid
        assert ds.StudyInstanceUID == src.study_uid
        assert hashlib.sha256(ds.PixelData).hexdigest() == src.pixel_sha256
    assert {sources[p].study_uid for p in acked} <= study_rows

    # Files in place but not in the database (killed between rename and commit) were never
    # acknowledged; they are tolerated but must be complete.
    orphans = placed - {r.path for r in rows}
    acked_uids = {sources[p].sop_uid for p in acked}
    for rel in orphans:
        check_complete(spool / rel)
        ds = pydicom.dcmread(spool / rel, stop_before_pixels=True)
        assert ds.SOPInstanceUID not in acked_uids or ds.SOPInstanceUID in by_uid

    assert mid_transfer_kills >= MIN_MID_TRANSFER_KILLS, (
        f"only {mid_transfer_kills} kills landed mid-transfer"
    )
    print(
        f"\ncrash test: {rounds} rounds, {mid_transfer_kills} kills mid-transfer, "
        f"{len(acked)}/{N_INSTANCES} acknowledged, 0 lost, "
        f"{partials_seen} partial file(s) and {orphans_seen} orphan(s) seen after kills, "
        f"{len(orphans)} orphan(s) at the end; generation {generated_s:.1f} s, "
        f"node start-ups {start_s:.1f} s, sending {send_s:.1f} s, "
        f"total {time.monotonic() - t0:.1f} s"
    )
