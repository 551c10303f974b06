"""The one atomic-write helper: all or nothing, the umask's mode, no temporary file left."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from spinexr.pipeline.atomic import write_atomically


def test_bytes_text_and_writer_replace_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.bin"
    write_atomically(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    write_atomically(path, "über\n", durable=False)
    assert path.read_text(encoding="utf-8") == "über\n"
    write_atomically(path, lambda tmp: tmp.write_bytes(b"by a writer"))
    assert path.read_bytes() == b"by a writer"
    assert os.listdir(path.parent) == ["out.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text("old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, broken)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["manifest.json"]


def test_leftovers_of_a_killed_write_are_removed(tmp_path: Path) -> None:
    import subprocess
    import sys

    from spinexr.pipeline.atomic import remove_leftovers

    (tmp_path / "kept.dcm").write_bytes(b"done")
    # a process killed while its writer function ran: the temporary file stays behind
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from spinexr.pipeline.atomic import write_atomically\n"
        "def die(tmp):\n"
        "    tmp.write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "write_atomically(Path(sys.argv[1]) / 'sr.dcm', die)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False)
    left = [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")]
    assert len(left) == 1 and left[0].startswith(".sr.dcm.")
    assert remove_leftovers(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.dcm"]
    assert remove_leftovers(tmp_path / "missing") == 0
