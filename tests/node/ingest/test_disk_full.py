"""A data folder that fills up while the node receives (issue 19, part 3).

The data folder (spool, database, outputs) lives on its own small tmpfs, so "full" is exact
and no other process on the machine can change the figures. The node runs as it does in
production: the DICOM listener and its association processes, and the HTTP server.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from ingest_support import Stack, build_stack, phantom_bytes
from live_node import LiveNode
from pydicom.uid import generate_uid
from sqlalchemy import select

from spinexr.node.db.models import Instance

pytestmark = pytest.mark.integration

TOKEN = "disk-full-token"
DISK_MB = 96
WATERMARK_MB = 32


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 96 MiB tmpfs mounted for this test (the test needs the right to mount)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def image(seed: int, size: tuple[int, int] = (256, 192)) -> tuple[bytes, pydicom.Dataset]:
    return phantom_bytes(seed, sop_class="CR", size=size, study_uid=generate_uid())


def fill(disk: Path, leave_mb: float) -> Path:
    """Fill ``disk`` until ``leave_mb`` MiB are free (one preallocated file)."""
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(filler, "ab") as f:
        os.posix_fallocate(f.fileno(), 0, f.tell() + free - int(leave_mb * 2**20))
    return filler


def test_below_the_watermark_c_store_is_a700_stow_503_and_both_serve_again(
    small_disk: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    stack = build_stack(
        tmp_path,
        storage={"data_dir": str(small_disk / "var"), "min_free_mb": WATERMARK_MB},
        http={"api_token": TOKEN},
    )
    with LiveNode(stack, TOKEN) as node:
        before = [image(s) for s in (1, 2)]
        assert node.c_store(before[0][1]) == 0x0000
        assert node.stow(before[1][0]).status_code == 200
        kept = node.stored()
        assert len(kept) == 2

        late = image(3)
        assoc = node.associate(late[1])  # open while there is room
        filler = fill(small_disk, WATERMARK_MB / 2)
        try:
            assert assoc.send_c_store(late[1]).Status == 0xA700
        finally:
            assoc.release()
        assert node.associate(late[1]).is_rejected  # new associations: no room
        r = node.stow(late[0])
        assert r.status_code == 503 and r.headers["Retry-After"] and "watermark" in r.text
        assert node.stored() == kept  # nothing accepted is lost or changed

        filler.unlink()  # space comes back: no restart needed
        assert node.c_store(late[1]) == 0x0000
        assert node.stow(image(4)[0]).status_code == 200
        now = node.stored()
        assert len(now) == 4 and all(now[k] == v for k, v in kept.items())
        assert leftovers(stack) == []


def test_a_data_set_bigger_than_the_room_left_is_refused_before_the_disk_is_full(
    small_disk: Path, tmp_path: Path, monkeypatch
) -> None:
    # No watermark of its own: the node still keeps its reserve, and refuses the data set
    # while it streams in (C-STORE) or when the write meets the full disk (STOW-RS).
    monkeypatch.chdir(tmp_path)
    stack = build_stack(
        tmp_path,
        storage={"data_dir": str(small_disk / "var"), "min_free_mb": 0},
        http={"api_token": TOKEN},
        dicom={"max_dataset_bytes": 64 * 2**20},
    )
    with LiveNode(stack, TOKEN) as node:
        assert node.c_store(image(5)[1]) == 0x0000
        kept = node.stored()
        big = image(6, size=(3200, 3200))  # 20 MiB of pixels
        filler = fill(small_disk, 12)
        assert node.c_store(big[1]) == 0xA700
        r = node.stow(big[0])
        assert r.status_code == 503 and r.headers["Retry-After"]
        assert node.stored() == kept
        assert leftovers(stack) == []

        filler.unlink()
        assert node.c_store(big[1]) == 0x0000
        assert len(node.stored()) == 2


def leftovers(stack: Stack) -> list[Path]:
    """Files in the spool that no instance row names (temporary or refused data sets)."""
    spool = stack.settings.storage.spool_dir
    with stack.sessions() as s:
        named = {spool / r.path for r in s.scalars(select(Instance))}
    return [p for p in spool.rglob("*") if p.is_file() and p not in named]


def test_disk_full_is_recognised_through_sqlalchemy_and_sqlite(tmp_path: Path) -> None:
    import errno
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from spinexr.node.errors import is_disk_full

    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL  # as sqlite3 sets it
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OperationalError("INSERT ...", {}, full))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = sqlite3.SQLITE_BUSY
    assert not is_disk_full(OperationalError("INSERT ...", {}, locked))
