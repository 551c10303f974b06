"""The spool: received files written durably (temp file, fsync, atomic rename, dir fsync).

Files being received live in ``.incoming/``: those the node writes itself directly there,
those pynetdicom writes during a C-STORE in one folder per association process
(:meth:`Spool.receiving_folder`), so that each process knows its own.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from spinexr.node.ingest.header import is_valid_uid
from spinexr.node.ingest.spoolwriter import SpooledFile, SpoolWriter

logger = logging.getLogger(__name__)

TMP_DIR = ".incoming"
RECEIVING_PREFIX = "assoc-"
"""Name prefix of an association process's folder in ``.incoming/`` (then its pid)."""


def safe_component(uid: str) -> str:
    """Return a path component for a UID that cannot escape the spool.

    Valid UIDs (digits and dots) are used as they are; anything else (``..``, slashes,
    the 32-hex ids of de-identified data sets) becomes ``x`` + a SHA-256 prefix.

    Parameters
    ----------
    uid : str
        A UID as received.

    Returns
    -------
    str
        A safe file or folder name.
    """
    if is_valid_uid(uid) and uid not in (".", ".."):
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Received instances on disk under ``root/<study>/<sop>[.vN].dcm``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / TMP_DIR
        self.tmp.mkdir(parents=True, exist_ok=True)
        # Study folders whose entry in the root is known durable in this process. A folder
        # created just before a crash may exist after restart without its entry having
        # reached the disk, so each folder's entry is fsynced once per process.
        self._durable: set[str] = set()
        self._durable_lock = threading.Lock()

    def clean_incomplete(self) -> int:
        """Delete half-written files left by a crash (they were never acknowledged).

        Returns
        -------
        int
            Number of files removed.
        """
        removed = 0
        for path in self.tmp.iterdir():
            if path.is_dir():
                removed += sum(1 for _ in path.iterdir())
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
                removed += 1
        if removed:
            logger.warning("removed %d incomplete file(s) from the spool", removed)
        return removed

    def free_bytes(self) -> int:
        """Return free space on the spool's file system."""
        return shutil.disk_usage(self.root).free

    def open_writer(self) -> SpoolWriter:
        """Create a new temporary file to be written piece by piece.

        Returns
        -------
        SpoolWriter
            The writer; :meth:`SpoolWriter.close` or :meth:`SpoolWriter.discard` ends it.
        """
        return SpoolWriter(self.tmp / f"{uuid.uuid4().hex}.part")

    def receiving_folder(self, pid: int) -> Path:
        """Return the temporary folder of the association process ``pid``.

        Parameters
        ----------
        pid : int
            The process id.

        Returns
        -------
        Path
            ``.incoming/assoc-<pid>`` (not created here).
        """
        return self.tmp / f"{RECEIVING_PREFIX}{pid}"

    def write_parts(self, parts: Iterable[bytes | bytearray | memoryview]) -> SpooledFile:
        """Write ``parts`` to a temporary file and hash them (not yet fsynced).

        Parameters
        ----------
        parts : iterable of bytes or memoryview
            The file's content in pieces.

        Returns
        -------
        SpooledFile
            The temporary file with its size and content hash.
        """
        writer = self.open_writer()
        try:
            for part in parts:
                writer.write(part)
        except BaseException:
            writer.discard()
            raise
        return writer.close()

    def relative_path(self, study_uid: str, sop_uid: str, version: int) -> Path:
        """Return the final path (relative to the root) of an instance version."""
        suffix = "" if version == 1 else f".v{version}"
        return Path(safe_component(study_uid)) / f"{safe_component(sop_uid)}{suffix}.dcm"

    def sync(self, spooled: SpooledFile) -> None:
        """Fsync a temporary file's content (the slow part, done outside any lock)."""
        if spooled.synced:
            return
        fd = os.open(spooled.tmp_path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def place(self, spooled: SpooledFile, relative: Path) -> Path:
        """Move a synced temporary file into place atomically and make the move durable.

        ``os.replace`` into the study folder, then fsync of that folder (and of the root
        the first time this process uses the study folder).

        Parameters
        ----------
        spooled : SpooledFile
            From :meth:`write_parts`, after :meth:`sync`.
        relative : Path
            From :meth:`relative_path`.

        Returns
        -------
        Path
            The absolute final path.
        """
        return self.place_all([(spooled, relative)])[0]

    def place_all(self, moves: list[tuple[SpooledFile, Path]]) -> list[Path]:
        """:meth:`place` for several files: every move first, then one fsync per folder.

        Parameters
        ----------
        moves : list of (SpooledFile, Path)
            Synced temporary files and their paths relative to the root.

        Returns
        -------
        list of Path
            The absolute final paths, in order.
        """
        root = self.root.resolve()
        finals: list[Path] = []
        folders: dict[Path, None] = {}
        for spooled, relative in moves:
            final = self.root / relative
            if not final.resolve().is_relative_to(root):
                raise ValueError("spool path escapes the spool")
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(spooled.tmp_path, final)
            finals.append(final)
            folders[final.parent] = None
        for folder in folders:
            _fsync_dir(folder)
        new = [f.name for f in folders if f.name not in self._durable]
        if new:
            _fsync_dir(self.root)
            with self._durable_lock:
                self._durable.update(new)
        return finals

    def discard(self, spooled: SpooledFile) -> None:
        """Delete a temporary file that will not be kept."""
        spooled.tmp_path.unlink(missing_ok=True)


ORPHAN_DIR = ".orphans"
ORPHAN_KEEP_SECONDS = 7 * 86400
"""How long a quarantined file whose instance never came again is kept."""


def quarantine_orphans(spool: Spool, known: set[str], now: float | None = None) -> int:
    """Move spool files that no database row knows into ``.orphans/`` (start-up sweep).

    A file can be moved into place and the process killed before its row is committed. It
    was never acknowledged, so the sender will send it again; until then it is set aside
    rather than deleted, so an admin can still look at it. A quarantined file is deleted at
    a later sweep once its instance has been received and recorded again (the database now
    knows its path), or after :data:`ORPHAN_KEEP_SECONDS`.

    Parameters
    ----------
    spool : Spool
        The spool.
    known : set of str
        Paths (relative to the spool root) recorded in the database.

    Returns
    -------
    int
        Number of files moved.
    """
    moved = 0
    target = spool.root / ORPHAN_DIR
    _prune_orphans(target, known, time.time() if now is None else now)
    for study in spool.root.iterdir():
        if not study.is_dir() or study.name in (TMP_DIR, ORPHAN_DIR):
            continue
        for path in study.iterdir():
            relative = str(path.relative_to(spool.root))
            if relative in known:
                continue
            target.mkdir(exist_ok=True)
            os.replace(path, target / f"{study.name}-{path.name}")
            moved += 1
    if moved:
        logger.warning("moved %d unrecorded spool file(s) to %s", moved, target)
    return moved


def _prune_orphans(folder: Path, known: set[str], now: float) -> None:
    """Delete quarantined files received again since, or older than the keeping time."""
    if not folder.is_dir():
        return
    pruned = 0
    for path in folder.iterdir():
        study, _, name = path.name.partition("-")
        again = f"{study}/{name}" in known
        if again or now - path.stat().st_mtime > ORPHAN_KEEP_SECONDS:
            path.unlink(missing_ok=True)
            pruned += 1
    if pruned:
        logger.info("deleted %d quarantined spool file(s): received again or expired", pruned)
