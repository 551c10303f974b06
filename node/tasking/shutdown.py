"""A warm shutdown that does not wait for the next poll of an idle worker.

Celery's warm shutdown (SIGTERM) only sets a flag, which the worker's loop looks at after
each wait for messages: with the embedded SQLite broker (a polling transport) that is up to
three seconds after the signal, for a worker that has nothing to do. :func:`install` makes
the signal end an idle worker at once: its ``worker_shutting_down`` receiver raises
:class:`celery.exceptions.WorkerShutdown` (Celery's own warm-shutdown exception, which the
worker handles as a normal stop) unless a task is running in this process (tracked with
``task_prerun`` / ``task_postrun``). A worker in a task finishes it first, as before.

A message being fetched when the signal comes is not lost: it is acknowledged only after
its task ran, and the job it names stays in the database, where the reconciler finds it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import signals
from celery.exceptions import WorkerShutdown

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_running = 0
_raised = False
_installed = False


def _task_started(**_kwargs: Any) -> None:
    global _running
    with _lock:
        _running += 1


def _task_ended(**_kwargs: Any) -> None:
    global _running
    with _lock:
        _running = max(0, _running - 1)


def _shutting_down(how: str = "", exitcode: int = 0, **_kwargs: Any) -> None:
    global _raised
    if how != "Warm":
        return
    with _lock:
        if _running or _raised:  # in a task, or stopping already: Celery's own way
            return
        _raised = True
    raise WorkerShutdown(exitcode)


def install() -> None:
    """Connect the receivers (once per process); call before the worker starts."""
    global _installed
    if _installed:
        return
    signals.task_prerun.connect(_task_started, weak=False)
    signals.task_postrun.connect(_task_ended, weak=False)
    signals.worker_shutting_down.connect(_shutting_down, weak=False)
    _installed = True
