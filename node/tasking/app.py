"""The Celery application: embedded durable broker by default, Redis when scaled out.

One module-level app (so workers find the tasks), configured from the settings by
:func:`configure` in every process that publishes or consumes.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from celery import Celery
from kombu import Exchange, Queue

from spinexr.node.settings import Settings

INFERENCE_QUEUE = "inference"
EXPORT_QUEUE = "export"

logger = logging.getLogger(__name__)

app = Celery("spinexr", include=["spinexr.node.tasking.tasks"])


def broker_url(settings: Settings) -> str:
    """Return the broker URL: the configured one, or SQLite in the data folder.

    Parameters
    ----------
    settings : Settings
        ``queue`` and ``storage`` sections.

    Returns
    -------
    str
        Kombu broker URL.
    """
    url = settings.queue.broker_url.get_secret_value()
    if url:
        return url
    path = (settings.storage.data_dir / "broker.sqlite").resolve()
    return f"sqla+sqlite:///{path}"


def configure(settings: Settings) -> Celery:
    """Configure the app for ``settings`` (broker, queues, reliability options).

    Parameters
    ----------
    settings : Settings
        Validated settings.

    Returns
    -------
    Celery
        The configured app.
    """
    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    url = broker_url(settings)
    if app.conf.broker_url not in (None, url):
        _forget_connections()
    options: dict[str, object] = {}
    if url.startswith(("redis://", "rediss://")):
        options = {
            # Above the longest task, so Redis never re-delivers a task that is running.
            "visibility_timeout": settings.queue.visibility_timeout,
            "queue_order_strategy": "priority",
            "priority_steps": list(range(11)),
        }
    app.conf.update(
        broker_url=url,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        # A task is acknowledged after it ran; a worker killed mid-task leaves it queued.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.queue.task_time_limit,
        task_soft_time_limit=max(1, settings.queue.task_time_limit - 30),
        task_queues=[
            Queue(name, Exchange(name, type="direct"), routing_key=name)
            for name in (INFERENCE_QUEUE, EXPORT_QUEUE)
        ],
        task_default_queue=INFERENCE_QUEUE,
        task_queue_max_priority=10,
        task_default_priority=3,
        # The SQLite transport hands its options to create_engine: Redis options only.
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def _forget_connections() -> None:
    """Drop the app's cached broker connection and producer pools (the broker changed).

    Celery creates them once, for the broker configured at that time; a process configured
    again for another broker (another settings file, as in tests) would otherwise go on
    publishing to the first one while reading queue depths from the second.
    """
    if app._pool is not None:
        app._pool.force_close_all()
        app._pool = None
    app.amqp._producer_pool = None


PARENT_ENV = "SPINEXR_SUPERVISOR_PID"
"""Set by `WorkerSupervisor`: the ``serve`` process whose death must stop the worker."""


def watch_parent(interval: float = 2.0) -> None:
    """Stop this worker (warm shutdown) when the ``serve`` that started it is gone.

    A ``serve`` killed with SIGKILL cannot stop its children; without this, its worker would
    outlive it and a restarted ``serve`` would start a second one. Does nothing for workers
    not started by ``serve`` (scaled-out ``spinexr-node worker``).

    Parameters
    ----------
    interval : float
        Seconds between checks.
    """
    expected = os.environ.get(PARENT_ENV)
    if not expected or not expected.isdigit():
        return

    def watch() -> None:
        while os.getppid() == int(expected):
            time.sleep(interval)
        logger.warning("serve (pid %s) is gone; worker %d stops", expected, os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_worker(settings: Settings, queues: list[str], concurrency: int) -> None:
    """Run a worker in this process until interrupted.

    Parameters
    ----------
    settings : Settings
        Validated settings.
    queues : list of str
        Queues to consume.
    concurrency : int
        Worker processes (``solo`` pool when 1).
    """
    from spinexr.node.tasking import shutdown
    from spinexr.node.tasking.runtime import init_runtime

    configure(settings)
    init_runtime(settings, inference=INFERENCE_QUEUE in queues)
    watch_parent()
    shutdown.install()
    pool = "solo" if concurrency == 1 else "prefork"
    app.worker_main(
        [
            "worker",
            "--queues",
            ",".join(queues),
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
            "--loglevel",
            settings.node.log_level,
            "--without-gossip",
            "--without-mingle",
            "--hostname",
            f"spinexr-{'+'.join(queues)}@%h",
        ]
    )
