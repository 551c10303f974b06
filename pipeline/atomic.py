"""Atomic file writes: a reader sees the old file or the new one, never a part of it.

The one helper the node, the pipeline and training write their files with (outputs,
checkpoints, manifests, caches): the content goes to a temporary file in the destination's
folder (same file system, so the rename is atomic), which replaces the destination with
``os.replace``. With ``durable`` the file is fsynced before the rename and its folder after
it, so that the new file survives a power cut once the call returns. The ingest spool has
its own writer (`spinexr.node.ingest.spool`): its files are fsynced while they arrive.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

TMP_SUFFIX = ".part"
"""The temporary file's suffix (its name: ``.<destination name>.<12 hex digits>.part``)."""


def write_atomically(
    path: Path, content: bytes | str | Callable[[Path], object], *, durable: bool = True
) -> None:
    """Write ``path`` through a temporary file beside it and ``os.replace``.

    Parameters
    ----------
    path : Path
        The destination; its folder is created if missing.
    content : bytes, str or callable
        Bytes, text (written as UTF-8), or a function that writes the file whose path it is
        given (``torch.save``, ``Dataset.save_as``...).
    durable : bool
        Fsync the file before the rename and the folder after it. Off for caches, which can
        be rebuilt.

    Raises
    ------
    OSError
        When the file cannot be written; the temporary file is removed and ``path`` is
        left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name (not mkstemp, whose files are private): the file gets the umask's mode.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")
    try:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        elif isinstance(content, str):
            tmp.write_text(content, encoding="utf-8")
        else:
            content(tmp)
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync(path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_leftovers(folder: Path) -> int:
    """Delete the temporary files that interrupted writes left in ``folder``.

    A process killed while :func:`write_atomically` wrote leaves its temporary file behind
    (the destination is untouched). Call this only where no other writer can be at work
    in ``folder`` (e.g. a job's output folder, written by the worker holding its lease).

    Parameters
    ----------
    folder : Path
        The folder (missing: nothing to do).

    Returns
    -------
    int
        Files deleted.
    """
    if not folder.is_dir():
        return 0
    gone = 0
    for path in folder.glob(f".*{TMP_SUFFIX}"):
        path.unlink(missing_ok=True)
        gone += 1
    return gone
