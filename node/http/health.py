"""``/readyz`` (can this node do its job now?) and ``/metrics`` (Prometheus text format).

``/healthz`` (in :mod:`spinexr.node.http.app`) only says the process is up. ``/readyz`` runs
the checks below side by side, each bounded by a timeout, and answers 200 when none fails
and 503 with the failing checks otherwise (a WARN, such as a demo bundle, does not fail):

* ``database`` — ``SELECT 1`` and the Alembic revision equals the code's head;
* ``broker`` — Redis (scaled out): a connection with a short timeout and the queue lengths;
  embedded: the SQLite broker file opens and its queues can be read;
* ``bundle`` — ``models.bundle`` verified (manifest, class list, SHA-256 of every file); the
  verdict is kept until a file in the bundle folder changes size or modification time;
* ``spool`` — free space above ``storage.min_free_mb`` and the folder writable;
* ``destination <name>`` — C-ECHO (DIMSE) or a QIDO-RS request (STOW-RS), answers kept
  30 s so a probe storm cannot hammer the PACS.

A check that is still running when its timeout passes is reported as failing and left to
finish in the background (one run per check at a time); the next probe uses its answer.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Hashable
from functools import partial

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from sqlalchemy import Engine

from spinexr.node.admin.secrets import redact, secret_values
from spinexr.node.db.migrate import head_revision
from spinexr.node.doctor import probes
from spinexr.node.doctor.result import (
    Cached,
    CheckResult,
    Status,
    Verdict,
    result_of,
    run_check,
)
from spinexr.node.metrics import make_registry
from spinexr.node.settings import Settings

CHECK_TIMEOUT = 3.0
"""Seconds ``/readyz`` waits for one check."""

DESTINATION_TTL = 30.0
"""Seconds a destination's C-ECHO/QIDO answer is reused."""

QUEUE_DEPTH_TTL = 10.0
"""Seconds the queue lengths shown in ``/metrics`` are reused."""


def cached_check(
    name: str,
    check: Callable[[], Verdict],
    *,
    ttl: float,
    key: Callable[[], Hashable] | None = None,
) -> Cached[CheckResult]:
    """Return a check whose result is reused as `Cached` says (``ttl``, ``key``)."""
    return Cached(name, partial(run_check, name, check), ttl=ttl, key=key)


class Operations:
    """What ``/readyz`` and ``/metrics`` share: a probe database engine and cached checks.

    Parameters
    ----------
    settings : Settings
        Validated settings.
    timeout : float
        Seconds each readiness check may take.
    """

    def __init__(self, settings: Settings, timeout: float = CHECK_TIMEOUT) -> None:
        self.settings = settings
        self.timeout = timeout
        self.secrets = secret_values(settings)
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        head = head_revision()
        s = settings
        self.checks: dict[str, Cached[CheckResult]] = {
            "database": cached_check(
                "database", lambda: probes.check_database(self.engine(), head), ttl=1.0
            ),
            "broker": cached_check("broker", lambda: probes.check_broker(s, timeout), ttl=5.0),
            "bundle": cached_check(
                "bundle",
                lambda: probes.check_bundle(s),
                ttl=math.inf,
                key=lambda: (
                    None if s.models.bundle is None else probes.bundle_fingerprint(s.models.bundle)
                ),
            ),
            "spool": cached_check(
                "spool", lambda: probes.check_spool(s, write_test=False), ttl=1.0
            ),
        }
        for dest in settings.destinations:
            self.checks[f"destination {dest.name}"] = cached_check(
                f"destination {dest.name}",
                partial(probes.check_destination, dest, s, timeout),
                ttl=DESTINATION_TTL,
            )
        self._depths: Cached[dict[str, int]] = Cached(
            "queue depths", lambda: probes.broker_depths(s, timeout), ttl=QUEUE_DEPTH_TTL
        )
        # Nothing runs before the first probe: an application that is never probed (tests,
        # tools) starts no bundle verification.
        self.registry: CollectorRegistry = make_registry(settings, self.engine, self.queue_depths)

    def engine(self) -> Engine:
        """Return the probe engine (created on first use)."""
        with self._engine_lock:
            if self._engine is None:
                self._engine = probes.probe_engine(self.settings.database_url, self.timeout)
            return self._engine

    def queue_depths(self) -> dict[str, int] | None:
        """Return messages waiting per queue, or None when the broker does not answer in time."""
        try:
            return self._depths.begin().result(self.timeout)
        except Exception:  # no answer in time (TimeoutError), or the broker failed
            return None

    def readiness(self) -> list[CheckResult]:
        """Run (or reuse) every readiness check; never waits longer than the timeout.

        Returns
        -------
        list of CheckResult
            One per check, secrets redacted.
        """
        start = time.monotonic()
        futures = {name: cached.begin() for name, cached in self.checks.items()}
        results = []
        for name, future in futures.items():
            left = self.timeout - (time.monotonic() - start)
            result = result_of(name, future, left, self.timeout)
            results.append(dataclasses.replace(result, detail=redact(result.detail, self.secrets)))
        return results

    def close(self) -> None:
        """Release the probe engine's connections."""
        with self._engine_lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None


def readiness_body(results: list[CheckResult]) -> tuple[int, dict[str, object]]:
    """Return the ``/readyz`` status code and JSON body for check results.

    Parameters
    ----------
    results : list of CheckResult
        The checks.

    Returns
    -------
    tuple of (int, dict)
        200 and ``{"status": "ready", "checks": {...}}``, or 503 with ``"not ready"`` and
        the names of the failing checks under ``"failing"``.
    """
    checks = {
        r.name: {
            "status": r.status.value.lower(),
            "detail": r.detail,
            "seconds": round(r.seconds, 3),
        }
        for r in results
    }
    failing = [r.name for r in results if r.status is Status.FAIL]
    if failing:
        return 503, {"status": "not ready", "failing": failing, "checks": checks}
    return 200, {"status": "ready", "checks": checks}


def make_router(ops: Operations) -> APIRouter:
    """Return the router with ``/readyz`` and ``/metrics``.

    Parameters
    ----------
    ops : Operations
        The application's checks and metrics registry.

    Returns
    -------
    APIRouter
        The routes (unauthenticated, like ``/healthz``: they carry no patient data).
    """
    router = APIRouter()

    @router.get("/readyz")
    def readyz() -> JSONResponse:
        """200 when every check passes, 503 with the failing checks otherwise."""
        code, body = readiness_body(ops.readiness())
        return JSONResponse(body, status_code=code, headers={"Cache-Control": "no-store"})

    @router.get("/metrics")
    def metrics(request: Request) -> Response:
        """Expose the metrics in the format the scraper asks for (Prometheus text by default)."""
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(ops.registry), headers={"Content-Type": content_type})

    return router
