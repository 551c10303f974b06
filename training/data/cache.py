"""Disk cache of display images: each DICOM is decoded once, then read back as ``.npz``.

The image is produced by the serving pipeline's own functions (`check_supported`,
`decode_pixels`, `display_image`, `resize_image`), so training sees the pixels serving sees.
Entries are keyed by a hash of the file (resolved path, size, mtime), the requested size and
the pipeline's `PREPROCESSING` description, so a changed file or preprocessing is a miss,
never a stale hit. Writes go to a unique temporary file in the same folder followed by
``os.replace``: concurrent DataLoader workers (threads or processes) at worst decode the same
image twice and never read a partial file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.errors import InvalidDicomError

from spinexr.pipeline.atomic import write_atomically
from spinexr.pipeline.errors import ImageRefusal, UnsupportedImageError
from spinexr.pipeline.geometry import ResizeTransform
from spinexr.pipeline.preprocess import (
    PREPROCESSING,
    check_supported,
    decode_pixels,
    display_image,
    resize_image,
)
from spinexr.training.data.records import ImageRecord

logger = logging.getLogger(__name__)

CACHE_FORMAT: Final = 1
"""Version of the entry layout; part of every key."""

_PREPROCESSING_KEY: Final = json.dumps(PREPROCESSING, sort_keys=True)


@dataclass(frozen=True, eq=False)
class CachedImage:
    """A cached display image and where it came from.

    Attributes
    ----------
    image : numpy.ndarray
        ``uint8`` (rows, columns) display image (bone bright), possibly downscaled.
    original_size : tuple of int
        (rows, columns) of the DICOM image.
    """

    image: npt.NDArray[np.uint8]
    original_size: tuple[int, int]

    @property
    def transform(self) -> ResizeTransform:
        """Original ↔ cached-image coordinates (exact per axis)."""
        return ResizeTransform(self.original_size, (self.image.shape[0], self.image.shape[1]))

    @property
    def scale(self) -> float:
        """Cached / original size along the longer original side (1.0 when not resized)."""
        rows, cols = self.original_size
        if rows >= cols:
            return self.image.shape[0] / rows
        return self.image.shape[1] / cols


def scaled_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """Size after shrinking so that the longer side is at most `max_side` (aspect kept).

    Parameters
    ----------
    size : tuple of int
        (rows, columns).
    max_side : int or None
        Bound on the longer side; `None` keeps the size.

    Returns
    -------
    tuple of int
        (rows, columns), each at least 1; unchanged when already small enough.
    """
    rows, cols = size
    longer = max(rows, cols)
    if max_side is None or longer <= max_side:
        return rows, cols
    s = max_side / longer
    if rows >= cols:
        return max_side, max(1, round(cols * s))
    return max(1, round(rows * s)), max_side


class DisplayCache:
    """Decode-once cache of the pipeline's display images, shared by training processes.

    Parameters
    ----------
    directory : pathlib.Path
        Cache folder (created on first write).
    max_side : int or None
        Longer side of the images `get` returns (shrunk with the pipeline's `resize_image`,
        aspect kept); `None` keeps the original size.

    Attributes
    ----------
    hits, misses : int
        Entries read back / decoded by this instance (per process).
    """

    def __init__(self, directory: Path, *, max_side: int | None = None) -> None:
        if max_side is not None and max_side < 1:
            raise ValueError(f"max_side must be a positive integer or None, got {max_side}")
        self.directory = Path(directory)
        self.max_side = max_side
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # Picklable for DataLoader worker processes (the lock is not).
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def get(self, record: ImageRecord) -> tuple[npt.NDArray[np.uint8], float]:
        """Return the display image, shrunk to `max_side`, and the scale factor.

        Parameters
        ----------
        record : ImageRecord
            The image.

        Returns
        -------
        tuple of (numpy.ndarray, float)
            ``uint8`` (rows, columns) image and new/original size along the longer side
            (use `get_entry(...).transform` for the exact per-axis mapping).

        Raises
        ------
        UnsupportedImageError
            When the pipeline refuses or cannot decode the image (message names the image).
        """
        entry = self.get_entry(record)
        return entry.image, entry.scale

    def get_entry(self, record: ImageRecord) -> CachedImage:
        """Like `get`, with the original size and the exact transform.

        Parameters
        ----------
        record : ImageRecord
            The image.

        Returns
        -------
        CachedImage
            Image and original size.
        """
        return self._entry(record, ("max_side", self.max_side))

    def get_resized(self, record: ImageRecord, size: tuple[int, int]) -> npt.NDArray[np.uint8]:
        """Return the full-resolution display image resized to exactly `size`.

        This is the serving pipeline's classifier input before the grey → RGB step
        (``prepare_image(...).classifier_input[..., 0]`` for ``size == (224, 224)``),
        bit for bit; it does not depend on `max_side`.

        Parameters
        ----------
        record : ImageRecord
            The image.
        size : tuple of int
            (rows, columns).

        Returns
        -------
        numpy.ndarray
            ``uint8`` image of shape `size`.

        Raises
        ------
        UnsupportedImageError
            When the pipeline refuses or cannot decode the image.
        """
        rows, cols = int(size[0]), int(size[1])
        if rows < 1 or cols < 1:
            raise ValueError(f"size must be positive, got {size}")
        return self._entry(record, ("size", [rows, cols])).image

    def path_for(self, record: ImageRecord, variant: tuple[str, Any]) -> Path:
        """Where the entry of `record` in `variant` lives (it may not exist yet)."""
        stat = record.path.stat()
        key = json.dumps(
            [
                CACHE_FORMAT,
                str(record.path.resolve()),
                stat.st_size,
                stat.st_mtime_ns,
                variant,
                _PREPROCESSING_KEY,
            ]
        )
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.directory / digest[:2] / f"{digest}.npz"

    def _entry(self, record: ImageRecord, variant: tuple[str, Any]) -> CachedImage:
        path = self.path_for(record, variant)
        cached = _read(path)
        if cached is not None:
            with self._lock:
                self.hits += 1
            return cached
        display = decode_display(record)
        original = (display.shape[0], display.shape[1])
        if variant[0] == "size":
            target = (int(variant[1][0]), int(variant[1][1]))
        else:
            target = scaled_size(original, self.max_side)
        image = display if target == original else resize_image(display, target)
        entry = CachedImage(np.ascontiguousarray(image, dtype=np.uint8), original)
        write_atomically(path, lambda tmp: _savez(tmp, entry), durable=False)
        with self._lock:
            self.misses += 1
        return entry


def decode_display(record: ImageRecord) -> npt.NDArray[np.uint8]:
    """Read a record's DICOM file and run the pipeline up to the ``uint8`` display image.

    Parameters
    ----------
    record : ImageRecord
        The image.

    Returns
    -------
    numpy.ndarray
        ``uint8`` (rows, columns), bone bright, original size.

    Raises
    ------
    UnsupportedImageError
        With the pipeline's reason; the message starts with the image id and
        ``sop_instance_uid`` is the image id.
    """
    try:
        ds = pydicom.dcmread(record.path)
    except (InvalidDicomError, EOFError, ValueError) as exc:
        raise UnsupportedImageError(
            ImageRefusal.INVALID_HEADER,
            f"image {record.image_id}: not a readable DICOM file ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]})",
            sop_instance_uid=record.image_id,
        ) from exc
    try:
        check_supported(ds)
        display, _ = display_image(ds, decode_pixels(ds))
    except UnsupportedImageError as exc:
        raise UnsupportedImageError(
            exc.refusal, f"image {record.image_id}: {exc.message}", sop_instance_uid=record.image_id
        ) from exc
    return display


def _read(path: Path) -> CachedImage | None:
    """Load an entry; `None` when absent or unreadable (it is then rewritten)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            image = np.asarray(data["image"], dtype=np.uint8)
            rows, cols = (int(v) for v in data["original_size"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        logger.warning("cache entry %s unreadable (%s); decoding again", path.name, exc)
        return None
    return CachedImage(image, (rows, cols))


def _savez(path: Path, entry: CachedImage) -> None:
    with open(path, "wb") as fh:  # a file object: np.savez would add ".npz" to a path
        np.savez(
            fh, image=entry.image, original_size=np.asarray(entry.original_size, dtype=np.int64)
        )
