"""Per-process state of a worker: database, warm pipeline, runner, exporter."""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from spinexr.node.db.engine import make_engine, make_session_factory
from spinexr.node.db.migrate import require_head
from spinexr.node.errors import ConfigError
from spinexr.node.export.exporter import Exporter
from spinexr.node.jobs.runner import JobRunner
from spinexr.node.settings import BodyParts, Settings
from spinexr.pipeline.preparation import read_preparation, waiting_for

logger = logging.getLogger(__name__)


class Runtime:
    """Everything a task needs, created once per process.

    Parameters
    ----------
    settings : Settings
        Validated settings.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        engine = make_engine(settings.database_url)
        require_head(engine)
        self.sessions: sessionmaker[Session] = make_session_factory(engine)
        self._pipeline: Any = None
        self._loaded_manifest: int | None = None
        self._lock = threading.Lock()
        self.runner = JobRunner(settings, self.sessions, self.pipeline, self.waiting_for)
        self.exporter = Exporter(settings, self.sessions)

    def waiting_for(self, radiographs: bool, ct: bool) -> str | None:
        """Return what a study with these images waits for while the bundle is prepared."""
        return waiting_for(self.settings.models.bundle, radiographs=radiographs, ct=ct)

    def preparing(self) -> bool:
        """Whether the bundle is being prepared now (the demo's staged first start)."""
        return read_preparation(self.settings.models.bundle) is not None

    def _manifest_stamp(self) -> int | None:
        bundle = self.settings.models.bundle
        try:
            return None if bundle is None else (bundle / "manifest.json").stat().st_mtime_ns
        except OSError:
            return None

    def pipeline(self) -> Any:
        """Return the warm pipeline, loading the bundle on first use.

        The bundle is loaded again when its manifest changed since (a bundle being prepared
        gains its models step by step).
        """
        with self._lock:
            stamp = self._manifest_stamp()
            if self._pipeline is not None and stamp != self._loaded_manifest:
                logger.info("the model bundle's manifest changed: loading it again")
                self._pipeline = None
            if self._pipeline is None:
                from spinexr.node.vertebrae import genant_cutoffs
                from spinexr.pipeline.engine import Pipeline
                from spinexr.pipeline.vertebrae.genant import GenantGrade

                bundle = self.settings.models.bundle
                if bundle is None:
                    raise ConfigError(["no model bundle configured (models.bundle)"])
                self._pipeline = Pipeline.from_directory(
                    bundle,
                    device=self.settings.models.device,
                    display_threshold=self.settings.models.display_threshold,
                    spine_check=self.settings.study.body_parts is BodyParts.SPINE,
                    vertebrae=self.settings.vertebrae.enabled,
                    genant_cutoffs=genant_cutoffs(self.settings),
                    ct=self.settings.ct.enabled,
                    ct_body_parts=self.settings.ct.body_parts,
                    characterise_from=GenantGrade(self.settings.ct.characterise_from),
                    characterise_all=self.settings.ct.characterise_all,
                )
                self._loaded_manifest = stamp
            return self._pipeline


_runtime: Runtime | None = None


def init_runtime(settings: Settings, *, inference: bool = False) -> Runtime:
    """Create this process's runtime; an inference worker loads the bundle now.

    Parameters
    ----------
    settings : Settings
        Validated settings.
    inference : bool
        Load and warm the pipeline at once (fail fast on a bad bundle).

    Returns
    -------
    Runtime
        The runtime.
    """
    global _runtime
    _runtime = Runtime(settings)
    if inference and _runtime.preparing():
        logger.info("the model bundle is being prepared: it is loaded when a job can run")
    elif inference:
        _runtime.pipeline().warm_up()
        logger.info("pipeline warm")
    return _runtime


def get_runtime() -> Runtime:
    """Return the runtime created by :func:`init_runtime`."""
    if _runtime is None:
        raise RuntimeError("worker runtime not initialised")
    return _runtime
