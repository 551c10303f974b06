"""Writing one received file into the spool's temporary area, piece by piece.

A :class:`SpoolWriter` appends the pieces as they arrive. The file's SHA-256 is computed
either inline or, with ``background=True``, by a helper thread that follows the file as it
grows (reading back each new MiB from the page cache), so that on a multi-core machine the
hashing runs beside the receiving instead of after it. Every MiB the kernel is also asked to
start writing the range back to disk (``sync_file_range``, Linux), so the disk works while
the rest is still arriving and the final fsync only waits for the tail. That early write-back
is only asked for while a single file is being received: with several at once (concurrent
associations) the disk is kept busy by their fsyncs anyway, and on ext4 early write-back makes
every journal commit (any fsync) wait for the data of all files in flight, which costs more
than it saves. With ``finish(sync=True)`` the helper fsyncs the file as soon as it is hashed,
while the caller already reads the header.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CHUNK = 2**20
"""Bytes hashed and handed to write-back at a time."""


@dataclass(frozen=True)
class SpooledFile:
    """A file written to the spool's temporary area, not yet in place."""

    tmp_path: Path
    size: int
    sha256: str
    synced: bool = False
    """Whether its content is already fsynced."""


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    """``sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE)`` on Linux, else None."""
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int

    def start(fd: int, offset: int, nbytes: int) -> None:
        func(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE: queue the range, do not wait

    return start


start_writeback = _load_sync_file_range()
"""Start writing a byte range of a file back to disk without waiting (None: not available)."""


class _Receiving:
    """How many background writers are open in this process (a thread-safe counter)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.count += n


_receiving = _Receiving()


class _Follower(threading.Thread):
    """Hashes a growing file from the page cache, starts its write-back, fsyncs at the end."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="spool-hash", daemon=True)
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._cond = threading.Condition()
        self._available = 0  # bytes the writer has written
        self._ended = False
        self._sync = False
        self._abandoned = False
        self.digest = hashlib.sha256()
        self.error: BaseException | None = None
        self.done = threading.Event()

    def advance(self, size: int) -> None:
        """Tell that ``size`` bytes are written in all."""
        with self._cond:
            self._available = size
            self._cond.notify()

    def end(self, size: int, *, sync: bool) -> None:
        """Nothing more will be written; hash the rest (and fsync if ``sync``)."""
        with self._cond:
            self._available = size
            self._ended = True
            self._sync = sync
            self._cond.notify()

    def abandon(self) -> None:
        """Stop as soon as possible (the file is being deleted) and wait for it."""
        with self._cond:
            self._abandoned = True
            self._cond.notify()
        self.join()

    def run(self) -> None:
        """Follow the file until it is complete or abandoned."""
        buf = bytearray(CHUNK)
        hashed = 0
        try:
            with memoryview(buf) as view:
                while True:
                    with self._cond:
                        while not (
                            self._abandoned or self._ended or self._available - hashed >= CHUNK
                        ):
                            self._cond.wait()
                        if self._abandoned:
                            return
                        available, ended, sync = self._available, self._ended, self._sync
                    while hashed < available:
                        n = os.preadv(self._fd, [view[: min(CHUNK, available - hashed)]], hashed)
                        if n <= 0:
                            raise OSError(f"spool file shorter than written ({hashed} bytes)")
                        self.digest.update(view[:n])
                        hashed += n
                    if ended:
                        if sync:
                            os.fsync(self._fd)
                        return
        except BaseException as exc:  # handed to the waiting caller
            self.error = exc
        finally:
            os.close(self._fd)
            self.done.set()


class PendingSpool:
    """A spool file that is written completely, its hash (and fsync) maybe still running.

    Parameters
    ----------
    tmp_path : Path
        The temporary file.
    size : int
        Its size.
    follower : _Follower or None
        The helper finishing it; None when it is finished already (``spooled``).
    spooled : SpooledFile or None
        The finished description, when there is no helper.
    """

    def __init__(
        self,
        tmp_path: Path,
        size: int,
        follower: _Follower | None = None,
        spooled: SpooledFile | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        self.size = size
        self._follower = follower
        self._spooled = spooled

    def result(self) -> SpooledFile:
        """Wait for the hash (and fsync) and describe the file.

        Returns
        -------
        SpooledFile
            The file with its SHA-256.

        Raises
        ------
        OSError
            Reading back or syncing the file failed.
        """
        if self._spooled is None:
            follower = self._follower
            assert follower is not None
            follower.done.wait()
            if follower.error is not None:
                raise follower.error
            self._spooled = SpooledFile(
                self.tmp_path, self.size, follower.digest.hexdigest(), synced=follower._sync
            )
        return self._spooled

    def discard(self) -> None:
        """Stop the helper and delete the file."""
        if self._follower is not None:
            self._follower.abandon()
        self.tmp_path.unlink(missing_ok=True)


class SpoolWriter:
    """A new temporary spool file written piece by piece as the bytes arrive.

    Parameters
    ----------
    path : Path
        The temporary file to create (it must not exist).
    background : bool
        Hash (and start the write-back) in a helper thread that follows the file.
    """

    def __init__(self, path: Path, *, background: bool = False) -> None:
        self.path = path
        self.size = 0
        self._digest = hashlib.sha256()
        self._flushed = 0
        self._fd: int | None = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
        )
        self._follower: _Follower | None = None
        self._notified = 0
        self._counted = False
        if background:
            try:
                self._follower = _Follower(path)
                self._follower.start()
            except BaseException:
                self.discard()
                raise
            _receiving.add(1)
            self._counted = True

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            _receiving.add(-1)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` to the file (and to the hash)."""
        if self._fd is None:
            raise ValueError("spool writer is closed")
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.write(self._fd, view[done:])
        self.size += len(view)
        if self._follower is None:
            self._digest.update(view)
        elif self.size - self._notified >= CHUNK:
            self._follower.advance(self.size)
            self._notified = self.size
        if self.size - self._flushed >= CHUNK and self._early_writeback():
            start_writeback(self._fd, self._flushed, self.size - self._flushed)  # type: ignore[misc]
            self._flushed = self.size

    def _early_writeback(self) -> bool:
        return start_writeback is not None and (not self._counted or _receiving.count <= 1)

    def finish(self, *, sync: bool = False) -> PendingSpool:
        """Close the file; its hash (and fsync, with ``sync``) may complete in the background.

        Parameters
        ----------
        sync : bool
            Also fsync the file's content.

        Returns
        -------
        PendingSpool
            The file; :meth:`PendingSpool.result` waits for the rest.
        """
        if self._fd is None:
            raise ValueError("spool writer is closed")
        fd, self._fd = self._fd, None
        self._uncount()
        try:
            if self.size > self._flushed and self._flushed and self._early_writeback():
                start_writeback(fd, self._flushed, self.size - self._flushed)  # type: ignore[misc]
            if self._follower is not None:
                self._follower.end(self.size, sync=sync)
                return PendingSpool(self.path, self.size, follower=self._follower)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        spooled = SpooledFile(self.path, self.size, self._digest.hexdigest(), synced=sync)
        return PendingSpool(self.path, self.size, spooled=spooled)

    def close(self) -> SpooledFile:
        """Close the file and describe it (not fsynced).

        Returns
        -------
        SpooledFile
            The temporary file with its size and SHA-256.
        """
        return self.finish().result()

    def discard(self) -> None:
        """Close and delete the file (nothing of it is kept)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        self._uncount()
        if self._follower is not None:
            self._follower.abandon()
        self.path.unlink(missing_ok=True)
