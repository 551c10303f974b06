"""Periodic progress lines with rate and ETA for long training-side loops."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class RateProgress:
    """Print ``[prefix] label: done/total (rate unit/s, ETA s)`` at most every `every` seconds.

    Parameters
    ----------
    total : int
        Items to process.
    label : str
        What the items are.
    prefix : str
        Tag in brackets at the start of each line.
    every : float
        Seconds between lines (the last item always prints).
    stream : file-like, optional
        Destination (default stderr).
    unit : str
        Unit of the rate.
    """

    def __init__(
        self,
        total: int,
        label: str,
        *,
        prefix: str,
        every: float = 5.0,
        stream: TextIO | None = None,
        unit: str = "img",
    ) -> None:
        self.total = total
        self.label = label
        self.prefix = prefix
        self.every = every
        self.stream = stream
        self.unit = unit
        self.start = self.last = time.monotonic()

    def update(self, done: int) -> None:
        """Report `done` items finished (prints when due or when all are done)."""
        now = time.monotonic()
        if now - self.last < self.every and done < self.total:
            return
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        print(
            f"[{self.prefix}] {self.label}: {done}/{self.total} "
            f"({rate:.2f} {self.unit}/s, ETA {eta:.0f} s)",
            file=self.stream if self.stream is not None else sys.stderr,
            flush=True,
        )
        self.last = now
