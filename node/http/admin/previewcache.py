"""The bounds of the preview cache: total size and age, least recently used first.

Previews (``<data_dir>/previews/*.png``) are rebuilt when missing, so the cache may drop any
of them. A preview served from the cache has its modification time set to now
(:func:`touch`), so the modification time is the last use. :func:`prune` removes previews
not used for ``http.preview_cache_max_age_days`` and then, oldest use first, as many as
needed to bring the folder under ``http.preview_cache_mb``. It never removes the preview it
is given to keep (the one a request is about to send), and removes a left-over temporary
file (a render interrupted by a crash) once it is an hour old.

:func:`maybe_prune` runs it at most once per :data:`PRUNE_INTERVAL` seconds per folder, for
requests served from the cache; a request that renders prunes every time, since it added to
the folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PRUNE_INTERVAL = 60.0
"""Seconds between two prunes of one folder started by requests served from the cache."""
STALE_TEMPORARY_SECONDS = 3600.0
"""Age after which a temporary file left by an interrupted render is removed."""

_last_prune: dict[Path, float] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class PruneReport:
    """What one prune did.

    Attributes
    ----------
    removed_files, removed_bytes : int
        Previews and temporary files removed, and their size.
    kept_files, kept_bytes : int
        Previews left, and their size.
    """

    removed_files: int
    removed_bytes: int
    kept_files: int
    kept_bytes: int


def touch(path: Path) -> None:
    """Mark a cached preview as used now (its modification time is its last use).

    Parameters
    ----------
    path : Path
        The preview (a vanished file is ignored).
    """
    with contextlib.suppress(FileNotFoundError):
        os.utime(path)


def prune(
    folder: Path,
    *,
    max_bytes: int,
    max_age_seconds: float,
    keep: Path | None = None,
    now: float | None = None,
) -> PruneReport:
    """Remove previews unused for ``max_age_seconds``, then the least recently used over size.

    Parameters
    ----------
    folder : Path
        The preview folder (missing: nothing to do).
    max_bytes : int
        Largest total size of the previews left.
    max_age_seconds : float
        Previews last used longer ago than this are removed.
    keep : Path, optional
        A preview never removed (the one being sent).
    now : float, optional
        The time (``time.time()``), for tests.

    Returns
    -------
    PruneReport
        What was removed and what is left.
    """
    now = time.time() if now is None else now
    removed_files = removed_bytes = 0
    entries: list[tuple[float, int, Path]] = []
    try:
        children = list(os.scandir(folder))
    except FileNotFoundError:
        return PruneReport(0, 0, 0, 0)
    for entry in children:
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            stat = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        path = Path(entry.path)
        if not entry.name.endswith(".png") or entry.name.startswith("."):
            if now - stat.st_mtime > STALE_TEMPORARY_SECONDS and _remove(path):
                removed_files, removed_bytes = removed_files + 1, removed_bytes + stat.st_size
            continue
        entries.append((stat.st_mtime, stat.st_size, path))
    entries.sort()  # least recently used first
    total = sum(size for _, size, _ in entries)
    kept: list[tuple[float, int, Path]] = []
    for mtime, size, path in entries:
        too_old = now - mtime > max_age_seconds
        if path == keep or not (too_old or total > max_bytes):
            kept.append((mtime, size, path))
            continue
        if _remove(path):  # else another request removed it first: gone either way
            removed_files, removed_bytes = removed_files + 1, removed_bytes + size
        total -= size
    if removed_files:
        logger.info(
            "preview cache: removed %d file(s), %.1f MiB; %d left, %.1f MiB",
            removed_files,
            removed_bytes / 2**20,
            len(kept),
            total / 2**20,
        )
    return PruneReport(removed_files, removed_bytes, len(kept), total)


def maybe_prune(
    folder: Path, *, max_bytes: int, max_age_seconds: float, keep: Path | None = None
) -> PruneReport | None:
    """Prune ``folder`` unless it was pruned less than :data:`PRUNE_INTERVAL` seconds ago.

    Parameters
    ----------
    folder : Path
        The preview folder.
    max_bytes, max_age_seconds : int, float
        As for :func:`prune`.
    keep : Path, optional
        A preview never removed.

    Returns
    -------
    PruneReport or None
        None when it was not due.
    """
    clock = time.monotonic()
    with _lock:
        last = _last_prune.get(folder)
        if last is not None and clock - last < PRUNE_INTERVAL:
            return None
        _last_prune[folder] = clock
    return prune(folder, max_bytes=max_bytes, max_age_seconds=max_age_seconds, keep=keep)


def _remove(path: Path) -> bool:
    """Remove a file; False when another request removed it first."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
