"""Writing one received file into the spool's temporary area, piece by piece.

A :class:`SpoolWriter` gathers the pieces as they arrive into page-aligned chunks of
:data:`CHUNK` bytes (:data:`CHUNK_ALONE` for a file received alone) and writes each full
chunk with direct I/O (``O_DIRECT``): the bytes go from the chunk to the disk without being
copied into the page cache and written back later.
On these machines that is what a buffered write plus fsync costs most of its CPU time for
(copying into new page-cache pages, then their write-back): direct writes of the same files
take about a tenth of the kernel time and reach the disk's own rate from one thread. The
file's end, less than a block, is written padded to the block size and the file truncated to
its length. File systems without direct I/O get buffered writes (same chunks, same hash).

The file's content hash (BLAKE3, :data:`HASH_PREFIX`) is computed chunk by chunk. With
``background=True`` a helper thread writes (and, while other files are being received too,
hashes) the chunks while the next ones are being received (the receiving thread waits only
when all :data:`CHUNKS_IN_FLIGHT` are still being written), and with ``finish(sync=True)``
it fsyncs the file once its end is written. The file's first
:data:`HEAD` bytes are kept in memory, so that the caller parses the header meanwhile.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

from blake3 import blake3

CHUNK = 2**22
"""Bytes gathered before a write while other files are being received too (a multiple of
:data:`BLOCK`): each chunk is a hand-over to the helper and back, and with several busy
threads every hand-over costs thread switches."""
CHUNK_ALONE = 2**20
"""Bytes gathered before a write for a file received alone: what is left to write after its
last byte arrives is less (the sender waits for that)."""
BLOCK = 4096
"""Alignment of direct writes: offsets, lengths and buffer addresses (covers 512-byte and
4 KiB logical blocks)."""
CHUNKS_IN_FLIGHT = 3
"""Chunks per background writer: one being filled, up to two being hashed and written."""
HEAD = 2**18
"""Bytes of the file's start kept in memory, so that its header is parsed without reading
the file back (direct writes leave nothing in the page cache)."""
_POOL_KEEP = 16
"""Free chunks kept for reuse (fresh anonymous pages cost a page fault each on first use)."""

O_DIRECT: int = getattr(os, "O_DIRECT", 0)
HASH_PREFIX = "blake3:"
"""Content hashes are ``blake3:`` and the hex digest (BLAKE3: about 6 GB/s on one core,
three times SHA-256 with SHA-NI; it lets other threads run while it hashes)."""


class _ChunkPool:
    """Page-aligned buffers of :data:`CHUNK` bytes, reused across files."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[mmap.mmap] = []

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
        return mmap.mmap(-1, CHUNK)  # anonymous mappings start on a page boundary

    def give(self, chunks: list[mmap.mmap]) -> None:
        """Take chunks back (closing those beyond the ones kept)."""
        with self._lock:
            keep = max(0, _POOL_KEEP - len(self._free))
            self._free.extend(chunks[:keep])
        for chunk in chunks[keep:]:
            chunk.close()


_pool = _ChunkPool()


class _Receiving:
    """How many files are being received with a helper in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self, n: int) -> int:
        """Change the count by ``n``; return the new count."""
        with self._lock:
            self.count += n
            return self.count


_receiving = _Receiving()


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
    """The file's first bytes (up to :data:`HEAD`), when the writer kept them."""


def _open(path: Path) -> tuple[int, bool]:
    """Create ``path`` for writing, with direct I/O where the file system has it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    if O_DIRECT:
        try:
            return os.open(path, flags | O_DIRECT, 0o644), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: no direct I/O on this file system
                raise
            path.unlink(missing_ok=True)
    return os.open(path, flags, 0o644), False


class _File:
    """The open temporary file: chunk writes, the padded end, fsync."""

    def __init__(self, path: Path) -> None:
        self.fd, self.direct = _open(path)
        self.offset = 0

    def put(self, chunk: mmap.mmap, n: int) -> None:
        """Append the first ``n`` bytes of ``chunk``."""
        with memoryview(chunk) as view:
            if self.direct and n % BLOCK:
                # The end of the file: a whole block written, then the file cut to length.
                padded = -(-n // BLOCK) * BLOCK
                view[n:padded] = bytes(padded - n)
                self._write(view[:padded])
                self.offset += n
                os.ftruncate(self.fd, self.offset)
                return
            self._write(view[:n])
        self.offset += n

    def _write(self, view: memoryview) -> None:
        done = 0
        while done < len(view):
            try:
                done += os.pwrite(self.fd, view[done:], self.offset + done)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self.direct:
                    raise
                # Direct I/O accepted at open but not for this write (stricter alignment):
                # the rest of the file is written buffered.
                flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
                fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~O_DIRECT)
                self.direct = False

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class _Follower(threading.Thread):
    """Hashes and writes the chunks handed to it, fsyncs at the end."""

    def __init__(self, file: _File, digest: blake3, *, hashes: bool) -> None:
        super().__init__(name="spool-write", daemon=True)
        self._file = file
        self.digest = digest
        self.hashes = hashes
        self._todo: queue.SimpleQueue[tuple[mmap.mmap, int] | None] = queue.SimpleQueue()
        self.free: queue.Queue[mmap.mmap] = queue.Queue()
        self._sync = False
        self._abandoned = False
        self.error: BaseException | None = None
        self.written = threading.Event()
        self.done = threading.Event()

    def hand(self, chunk: mmap.mmap, n: int) -> None:
        """Queue the first ``n`` bytes of ``chunk`` for writing."""
        self._todo.put((chunk, n))

    def end(self, *, sync: bool) -> None:
        """Nothing more is coming; fsync after the last chunk if ``sync``."""
        self._sync = sync
        self._todo.put(None)

    def abandon(self) -> None:
        """Stop as soon as possible (the file is being deleted) and wait for it."""
        self._abandoned = True
        self._todo.put(None)
        self.join()

    def run(self) -> None:
        """Write chunks until the end or abandonment."""
        try:
            while True:
                item = self._todo.get()
                if item is None or self._abandoned:
                    break
                chunk, n = item
                try:
                    if self.error is None:
                        if self.hashes:
                            with memoryview(chunk) as view:
                                self.digest.update(view[:n])
                        self._file.put(chunk, n)
                except BaseException as exc:  # kept for the writer and the caller
                    self.error = exc
                finally:
                    self.free.put(chunk)
            self.written.set()
            if self._sync and self.error is None and not self._abandoned:
                os.fsync(self._file.fd)
        except BaseException as exc:
            self.error = exc
        finally:
            self._file.close()
            self.written.set()
            self.done.set()


class PendingSpool:
    """A spool file that is received completely, its writing, hash and fsync maybe running.

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
    chunks : list of mmap
        The helper's chunks, returned to the pool when it is done.
    """

    def __init__(
        self,
        tmp_path: Path,
        size: int,
        follower: _Follower | None = None,
        spooled: SpooledFile | None = None,
        chunks: list[mmap.mmap] | None = None,
        head: bytes = b"",
    ) -> None:
        self.tmp_path = tmp_path
        self.size = size
        self._follower = follower
        self._spooled = spooled
        self._chunks = chunks or []
        self.head = head if spooled is None else spooled.head
        """The file's first bytes (up to :data:`HEAD`), readable before it is written."""

    def _release(self) -> None:
        chunks, self._chunks = self._chunks, []
        _pool.give(chunks)

    def wait_written(self) -> None:
        """Wait until every byte is in the file (it may not be fsynced yet).

        Raises
        ------
        OSError
            Writing failed.
        """
        follower = self._follower
        if follower is not None and self._spooled is None:
            follower.written.wait()
            if follower.error is not None:
                raise follower.error

    def result(self) -> SpooledFile:
        """Wait for the writing, hash (and fsync) and describe the file.

        Returns
        -------
        SpooledFile
            The file with its content hash.

        Raises
        ------
        OSError
            Writing or syncing the file failed.
        """
        if self._spooled is None:
            follower = self._follower
            assert follower is not None
            follower.done.wait()
            self._release()
            if follower.error is not None:
                raise follower.error
            self._spooled = SpooledFile(
                self.tmp_path,
                self.size,
                HASH_PREFIX + follower.digest.hexdigest(),
                synced=follower._sync,
                head=self.head,
            )
        return self._spooled

    def discard(self) -> None:
        """Stop the helper and delete the file."""
        if self._follower is not None:
            self._follower.abandon()
            self._release()
        self.tmp_path.unlink(missing_ok=True)


class SpoolWriter:
    """A new temporary spool file written piece by piece as the bytes arrive.

    Parameters
    ----------
    path : Path
        The temporary file to create (it must not exist).
    background : bool
        Hash and write the chunks in a helper thread while the next ones arrive.
    """

    def __init__(self, path: Path, *, background: bool = False) -> None:
        self.path = path
        self.size = 0
        self._file: _File | None = _File(path)
        self._digest = blake3()
        self._head = b""
        self._counted = False
        self._hash_here = True
        self._follower: _Follower | None = None
        self._chunks: list[mmap.mmap] = []
        try:
            self._chunk = self._new_chunk()
            if background:
                # A file received alone is hashed by the receiving thread, beside the
                # helper's writes (a shorter wait after its last byte); with several at once
                # the receiving threads are kept lean and each helper hashes its own file.
                self._counted = True
                self._hash_here = _receiving.add(1) == 1
                self._follower = _Follower(self._file, self._digest, hashes=not self._hash_here)
                for _ in range(CHUNKS_IN_FLIGHT - 1):
                    self._follower.free.put(self._new_chunk())
                self._follower.start()
        except BaseException:
            self.discard()
            raise
        self._fill = 0

    @property
    def direct(self) -> bool:
        """Whether the file is written with direct I/O."""
        return self._file is not None and self._file.direct

    @property
    def _chunk_size(self) -> int:
        """Bytes per chunk: short hand-overs for a file alone, fewer among several."""
        return CHUNK_ALONE if self._hash_here else CHUNK

    def _new_chunk(self) -> mmap.mmap:
        chunk = _pool.take()
        self._chunks.append(chunk)
        return chunk

    def _release(self) -> None:
        chunks, self._chunks = self._chunks, []
        _pool.give(chunks)
        self._uncount()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            _receiving.add(-1)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` to the file (and to the hash).

        Raises
        ------
        OSError
            Writing an earlier chunk failed (the file is unusable then).
        ValueError
            The writer is closed.
        """
        if self._file is None:
            raise ValueError("spool writer is closed")
        view = memoryview(data).cast("B")
        done, total, size = 0, len(view), self._chunk_size
        while done < total:
            n = min(size - self._fill, total - done)
            self._chunk[self._fill : self._fill + n] = view[done : done + n]
            self._fill += n
            done += n
            if self._fill == size:
                self._put_chunk()
        self.size += total

    def _chunk_done(self) -> None:
        """Keep the head from the file's first chunk; hash the chunk unless the helper does."""
        with memoryview(self._chunk) as view:
            if not self._head:  # the file's first chunk (full ones are never empty)
                self._head = bytes(view[: min(self._fill, HEAD)])
            if self._hash_here:
                self._digest.update(view[: self._fill])

    def _put_chunk(self) -> None:
        """Write the full current chunk (or hand it to the helper) and start a new one."""
        self._chunk_done()
        follower = self._follower
        if follower is None:
            assert self._file is not None
            self._file.put(self._chunk, self._fill)
        else:
            if follower.error is not None:
                raise follower.error
            follower.hand(self._chunk, self._fill)
            self._chunk = follower.free.get()
        self._fill = 0

    def finish(self, *, sync: bool = False) -> PendingSpool:
        """Write the end; writing, hash and fsync (with ``sync``) may end in the background.

        Parameters
        ----------
        sync : bool
            Also fsync the file's content.

        Returns
        -------
        PendingSpool
            The file; :meth:`PendingSpool.result` waits for the rest.
        """
        file = self._file
        if file is None:
            raise ValueError("spool writer is closed")
        self._chunk_done()
        follower = self._follower
        if follower is not None:
            if self._fill:
                follower.hand(self._chunk, self._fill)
            follower.end(sync=sync)
            self._uncount()
            self._file, self._follower = None, None
            chunks, self._chunks = self._chunks, []
            return PendingSpool(
                self.path, self.size, follower=follower, chunks=chunks, head=self._head
            )
        self._file = None
        try:
            if self._fill:
                file.put(self._chunk, self._fill)
            if sync:
                os.fsync(file.fd)
        finally:
            file.close()
            self._release()
        spooled = SpooledFile(
            self.path,
            self.size,
            HASH_PREFIX + self._digest.hexdigest(),
            synced=sync,
            head=self._head,
        )
        return PendingSpool(self.path, self.size, spooled=spooled)

    def close(self) -> SpooledFile:
        """Write the end and describe the file (not fsynced).

        Returns
        -------
        SpooledFile
            The temporary file with its size and content hash.
        """
        return self.finish().result()

    def discard(self) -> None:
        """Close and delete the file (nothing of it is kept)."""
        file, self._file = self._file, None
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.abandon()
        elif file is not None:
            file.close()
        self._release()
        self.path.unlink(missing_ok=True)
