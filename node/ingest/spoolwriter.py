"""Files in the spool's temporary area: written piece by piece, or received by pynetdicom.

A :class:`SpoolWriter` writes a file from byte pieces (STOW-RS parts, an inflated data set)
and hashes them on the way; :func:`received_file` describes a file that pynetdicom wrote
while the C-STORE data arrived (see :mod:`spinexr.node.dimse.association`). Either way the
result is a :class:`SpooledFile`: its temporary path, size, content hash and first bytes.
Neither fsyncs: :meth:`spinexr.node.ingest.spool.Spool.sync` does, once the file is checked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from blake3 import blake3

HEAD = 2**18
"""Bytes of the file's start kept in memory, so that its header is parsed without reading
the file again."""
HASH_PREFIX = "blake3:"
"""Content hashes are ``blake3:`` and the hex digest (BLAKE3: about 6 GB/s on one core,
three times SHA-256 with SHA-NI; it lets other threads run while it hashes)."""


@dataclass(frozen=True)
class SpooledFile:
    """A file written to the spool's temporary area, not yet in place."""

    tmp_path: Path
    size: int
    content_hash: str
    """``blake3:`` and the hex digest of the whole file."""
    synced: bool = False
    """Whether its content is already fsynced."""
    head: bytes = field(default=b"", repr=False, compare=False)
    """The file's first bytes (up to :data:`HEAD`)."""


def received_file(path: Path) -> SpooledFile:
    """Describe a complete file someone else wrote: size, content hash, first bytes.

    Parameters
    ----------
    path : Path
        The file (in the spool's temporary area).

    Returns
    -------
    SpooledFile
        Not synced.
    """
    digest = blake3()
    size = path.stat().st_size
    if size:
        digest.update_mmap(path)  # hashed from the page cache, without the GIL
    with open(path, "rb") as f:
        head = f.read(HEAD)
    return SpooledFile(path, size, HASH_PREFIX + digest.hexdigest(), head=head)


class SpoolWriter:
    """A new temporary spool file written piece by piece, hashed on the way.

    Parameters
    ----------
    path : Path
        The temporary file to create (it must not exist).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._digest = blake3()
        self._head = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` to the file (and to the hash).

        Raises
        ------
        OSError
            Writing failed (the disk is full, ...).
        ValueError
            The writer is closed.
        """
        if self._fd < 0:
            raise ValueError("spool writer is closed")
        view = memoryview(data).cast("B")
        if len(self._head) < HEAD:
            self._head += view[: HEAD - len(self._head)]
        self._digest.update(view)
        done = 0
        while done < len(view):
            done += os.write(self._fd, view[done:])
        self.size += len(view)

    def close(self, *, sync: bool = False) -> SpooledFile:
        """Close the file and describe it.

        Parameters
        ----------
        sync : bool
            Fsync its content first.

        Returns
        -------
        SpooledFile
            The temporary file with its size and content hash.
        """
        if self._fd < 0:
            raise ValueError("spool writer is closed")
        fd, self._fd = self._fd, -1
        try:
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return SpooledFile(
            self.path,
            self.size,
            HASH_PREFIX + self._digest.hexdigest(),
            synced=sync,
            head=bytes(self._head),
        )

    def discard(self) -> None:
        """Close and delete the file (nothing of it is kept)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
        self.path.unlink(missing_ok=True)
