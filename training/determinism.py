"""Reproducible torch training: a fixed thread count and deterministic algorithms."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def reproducible_torch(threads: int | None) -> Iterator[None]:
    """Fix the thread count and ask for deterministic algorithms; restore both afterwards.

    Parameters
    ----------
    threads : int or None
        ``torch.set_num_threads`` inside the block (None: leave it).

    Yields
    ------
    None
        Inside the block, ``torch.use_deterministic_algorithms(True, warn_only=True)``.
    """
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
