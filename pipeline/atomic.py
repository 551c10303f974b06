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
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.part")
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
