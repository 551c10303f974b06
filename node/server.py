"""``spinexr-node serve``: the SCP, the HTTP server and, when embedded, the worker."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import uvicorn
from sqlalchemy import select

from spinexr.node import __version__
from spinexr.node.db.engine import make_engine, make_session_factory
from spinexr.node.db.migrate import current_revision, upgrade
from spinexr.node.db.models import Instance
from spinexr.node.dimse.scp import StoreSCP
from spinexr.node.errors import ConfigError
from spinexr.node.http.app import create_app
from spinexr.node.ingest.assembler import StudyAssembler, model_identity
from spinexr.node.ingest.service import IngestService
from spinexr.node.ingest.spool import Spool, quarantine_orphans
from spinexr.node.jobs.reconciler import Reconciler
from spinexr.node.settings import Settings
from spinexr.node.tasking.app import EXPORT_QUEUE, INFERENCE_QUEUE, configure
from spinexr.node.tasking.dispatch import publish_analysis, publish_export, queue_job
from spinexr.node.tasking.supervisor import WorkerSupervisor
from spinexr.pipeline.preparation import read_preparation

logger = logging.getLogger(__name__)

HTTP_GRACE_SECONDS = 2
"""Seconds the HTTP server lets requests in flight finish when ``serve`` stops."""


def prepare_storage(settings: Settings) -> None:
    """Create the data, spool and output folders.

    Parameters
    ----------
    settings : Settings
        ``storage`` section.
    """
    for folder in (
        settings.storage.data_dir,
        settings.storage.spool_dir,
        settings.storage.output_dir,
    ):
        folder.mkdir(parents=True, exist_ok=True)


def check_bundle(settings: Settings) -> None:
    """Say clearly whether a model bundle is configured.

    Parameters
    ----------
    settings : Settings
        ``models`` section.

    Raises
    ------
    ConfigError
        If a bundle is configured but its folder does not exist (and is not being
        prepared: `spinexr.pipeline.preparation`).
    """
    bundle = settings.models.bundle
    if bundle is None and not settings.embedded_queue:
        logger.info(
            "no model bundle on this node: inference workers (spinexr-node worker --queues "
            "inference) analyse the studies; set models.bundle here too so that job keys "
            "carry the model version"
        )
        return
    if bundle is None:
        logger.warning(
            "NO MODEL BUNDLE LOADED: studies are received and stored but not analysed. "
            "Set models.bundle (SPINEXR_MODELS__BUNDLE) to a bundle folder."
        )
        return
    prep = read_preparation(bundle)
    if prep is not None:
        logger.warning("model bundle %s is being prepared: %s", bundle, prep.describe())
        return
    if not (bundle / "manifest.json").is_file():
        raise ConfigError([f"models.bundle: {bundle} is not a model bundle (no manifest.json)"])
    logger.info("model bundle configured: %s", bundle)


class _HttpServer(uvicorn.Server):
    """Uvicorn server whose signals are handled by :func:`run_server`.

    Uvicorn's own handling re-raises SIGTERM after its shutdown, which would kill the
    process before the SCP and the worker are stopped.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave signal handling to the caller."""
        yield


def run_server(settings: Settings, config_file: Path | None = None) -> None:
    """Run the node until interrupted (SIGINT/SIGTERM).

    On SIGTERM it stops within about three seconds: the HTTP server lets requests in flight
    finish (:data:`HTTP_GRACE_SECONDS`), the DICOM listener closes its port and each
    association finishes the C-STORE being recorded and is aborted (A-ABORT), and the
    embedded worker ends at once when idle (else it is given
    `spinexr.node.tasking.supervisor.STOP_SECONDS` to finish its task).

    Parameters
    ----------
    settings : Settings
        Validated settings.
    config_file : Path, optional
        The settings file, handed on to the worker child.
    """
    logger.info("spinexr-node %s starting", __version__)
    prepare_storage(settings)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    logger.info(
        "database %s at revision %s", engine.url.get_backend_name(), current_revision(engine)
    )
    check_bundle(settings)
    logger.info("queue: %s", "embedded" if settings.embedded_queue else "external broker")
    if not settings.http.api_token.get_secret_value():
        logger.warning(
            "http.api_token is empty: STOW-RS accepts anyone; the admin API and pages are "
            "disabled until it is set"
        )
    sessions = make_session_factory(engine)
    spool = Spool(settings.storage.spool_dir)
    spool.clean_incomplete()
    with sessions() as session:
        known = set(session.scalars(select(Instance.path)))
    quarantine_orphans(spool, known)
    ingest = IngestService(settings, sessions, spool)
    configure(settings)
    # Scaled out, inference workers elsewhere hold the bundle; serve only queues.
    can_analyse = settings.models.bundle is not None or not settings.embedded_queue

    def publish(job_id: int) -> None:
        if can_analyse:
            queue_job(sessions, job_id)
        else:
            logger.warning("job %s waits: no model bundle loaded", job_id)

    assembler = StudyAssembler(
        settings, sessions, model_identity(settings.models.bundle), publish=publish
    )
    reconciler = Reconciler(
        settings, sessions, publish_analysis, publish_export, can_analyse=can_analyse
    )
    reconciler.reconcile(startup=settings.embedded_queue)
    queues = [INFERENCE_QUEUE, EXPORT_QUEUE] if settings.embedded_queue else [EXPORT_QUEUE]
    if settings.embedded_queue and not can_analyse:
        queues = [EXPORT_QUEUE]
    worker = WorkerSupervisor(queues, config_file)
    worker.start()
    scp = StoreSCP(settings)
    scp.start()
    assembler.start()
    reconciler.start(interval=min(30.0, max(2.0, settings.queue.lease_seconds / 10)))
    try:
        config = uvicorn.Config(
            create_app(settings, ingest),
            host=settings.http.host,
            port=settings.http.port,
            log_level="warning",
            access_log=False,
            # Uvicorn's records (a request's traceback) go through the node's handler and
            # its filter (spinexr.node.phi), not through a handler of uvicorn's own.
            log_config=None,
            # A request in flight (a STOW-RS being recorded) may finish, within this.
            timeout_graceful_shutdown=HTTP_GRACE_SECONDS,
        )
        http = _HttpServer(config)

        def begin_stop() -> None:
            scp.begin_stop()
            worker.begin_stop()

        def stop(signum: int, _frame: FrameType | None) -> None:
            logger.info("%s received, shutting down", signal.Signals(signum).name)
            http.should_exit = True
            # The listener and the worker start stopping now, while HTTP winds down.
            threading.Thread(target=begin_stop, name="stopping", daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        logger.info("HTTP server on %s:%d", settings.http.host, settings.http.port)
        http.run()
    finally:
        # Every part is asked to stop first, then waited for: they stop side by side.
        scp.begin_stop()
        worker.begin_stop()
        assembler.stop()
        reconciler.stop()
        scp.stop()
        worker.stop()
        engine.dispose()
        logger.info("spinexr-node stopped")
