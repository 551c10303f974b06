"""The Celery application: embedded durable broker by default, Redis when scaled out."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from spinexr.node.settings import Settings

INFERENCE_QUEUE = "inference"
EXPORT_QUEUE = "export"


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


def make_celery(settings: Settings) -> Celery:
    """Create the Celery app for ``settings``.

    Parameters
    ----------
    settings : Settings
        Validated settings.

    Returns
    -------
    Celery
        The app with queues, serializer, acks and time limits set.
    """
    settings.storage.data_dir.mkdir(parents=True, exist_ok=True)
    app = Celery("spinexr", broker=broker_url(settings))
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.queue.task_time_limit,
        task_soft_time_limit=max(1, settings.queue.task_time_limit - 30),
        task_queues=[Queue(INFERENCE_QUEUE), Queue(EXPORT_QUEUE)],
        task_default_queue=INFERENCE_QUEUE,
        broker_transport_options={
            "visibility_timeout": settings.queue.visibility_timeout,
            "queue_order_strategy": "priority",
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


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
    app = make_celery(settings)
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
        ]
    )
