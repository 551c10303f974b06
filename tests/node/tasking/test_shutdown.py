"""The worker's warm shutdown: at once when idle, after the task when in one, once."""

from __future__ import annotations

import pytest
from celery import signals
from celery.exceptions import WorkerShutdown

from spinexr.node.tasking import shutdown


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutdown, "_running", 0)
    monkeypatch.setattr(shutdown, "_raised", False)
    shutdown.install()


def _term(how: str = "Warm") -> None:
    signals.worker_shutting_down.send(sender="w@h", sig="SIGTERM", how=how, exitcode=0)


def test_idle_worker_stops_at_once() -> None:
    with pytest.raises(WorkerShutdown):
        _term()
    _term()  # a second SIGTERM does not interrupt the shutdown under way


def test_worker_in_a_task_finishes_it_first() -> None:
    signals.task_prerun.send(sender=None, task_id="1", task=None)
    _term()  # Celery's own flag: the task ends, then the worker
    signals.task_postrun.send(sender=None, task_id="1", task=None)
    with pytest.raises(WorkerShutdown):
        _term()


def test_cold_shutdown_is_left_to_celery() -> None:
    _term("Cold")
