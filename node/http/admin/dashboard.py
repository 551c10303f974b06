"""The dashboard's figures, from the database and the broker.

Queues, job and study counts, throughput, turnaround, disk, workers and warnings.

Throughput and turnaround cover the last 24 hours. Turnaround runs from a study's first
received instance to its job's first ``exported`` state.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from spinexr.node.admin.jobs import status as job_status
from spinexr.node.admin.viewers import destinations_view
from spinexr.node.db.models import AuditEvent, ExportAttempt, Instance, Job, Study, utcnow
from spinexr.node.db.states import ExportStatus, JobState, StudyStatus
from spinexr.node.settings import Settings

logger = logging.getLogger(__name__)

WINDOW = dt.timedelta(hours=24)
"""Period of the throughput and turnaround figures."""

RECORDING_SLACK = dt.timedelta(hours=1)
"""How far a study's First and Last Received may be off one of its instances' Received At.

All three come from the clock readings of the recordings, but two processes recording
instances of one study may commit in the other order than they read the clock (by the
length of a transaction, far less than this)."""

PROBE_TIMEOUT = 0.5
"""Seconds a broker may take to accept a TCP connection before it counts as unreachable."""

DEMO_WARNING = "DEMO BUNDLE LOADED — synthetic phantoms, not for clinical use"


def broker_reachable(settings: Settings, timeout: float = PROBE_TIMEOUT) -> bool:
    """Say quickly whether the broker accepts connections (the embedded one always does).

    Parameters
    ----------
    settings : Settings
        ``queue.broker_url``.
    timeout : float
        Seconds to wait for a TCP connection.

    Returns
    -------
    bool
        True for the embedded broker, or when the broker's port accepts a connection.
    """
    url = settings.queue.broker_url.get_secret_value()
    if not url or not url.startswith(("redis://", "rediss://")):
        return True
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "localhost", parts.port or 6379), timeout):
            return True
    except OSError:
        return False


def queue_depths_quick(settings: Settings) -> dict[str, int | None]:
    """Return `spinexr.node.tasking.depth.queue_depths`, or unknowns when the broker is down.

    Parameters
    ----------
    settings : Settings
        Broker settings.

    Returns
    -------
    dict
        Queue name → waiting messages (None: unknown).
    """
    from spinexr.node.tasking.app import EXPORT_QUEUE, INFERENCE_QUEUE
    from spinexr.node.tasking.depth import queue_depths

    if not broker_reachable(settings):
        return {INFERENCE_QUEUE: None, EXPORT_QUEUE: None}
    return queue_depths(settings)


def workers_seen(
    settings: Settings, sessions: sessionmaker[Session], recent: list[str] | None = None
) -> dict[str, Any]:
    """Return the workers seen and where that was learnt.

    With a reachable Redis broker, Celery's ``inspect ping`` (1 s); otherwise (embedded
    broker, or no answer) the database: workers holding a job lease now, or that started
    an analysis in the last hour.

    Parameters
    ----------
    settings : Settings
        Broker settings.
    sessions : sessionmaker
        Database sessions.
    recent : list of str, optional
        Workers that started an analysis in the last hour, when the caller has them
        (`spinexr.node.admin.jobs.status`); read here otherwise.

    Returns
    -------
    dict
        ``names`` (sorted) and ``source`` (a sentence).
    """
    if not settings.embedded_queue and broker_reachable(settings):
        from spinexr.node.tasking.app import configure

        try:
            replies = configure(settings).control.inspect(timeout=1.0).ping() or {}
        except Exception as exc:  # broker went away between the probe and the call
            logger.warning("celery inspect failed: %s", type(exc).__name__)
            replies = {}
        if replies:
            return {"names": sorted(replies), "source": "Celery inspect (live answers)"}
    with sessions() as session:
        leases = set(
            session.scalars(
                select(Job.lease_owner).where(
                    Job.lease_owner.is_not(None), Job.lease_expires_at > utcnow()
                )
            )
        )
    if recent is None:
        recent = list(job_status(sessions)["workers_seen_last_hour"])
    return {
        "names": sorted(n for n in leases | set(recent) if n),
        "source": "database: job leases held now and analyses started in the last hour",
    }


def _percentiles(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 90))


def activity(sessions: sessionmaker[Session], now: dt.datetime | None = None) -> dict[str, Any]:
    """Return study counts, throughput and turnaround over the last 24 hours.

    Parameters
    ----------
    sessions : sessionmaker
        Database sessions.
    now : datetime, optional
        End of the window (tests).

    Returns
    -------
    dict
        ``studies`` (count per status), ``window_hours``, ``instances_received``,
        ``studies_received``, ``studies_exported`` and their ``*_per_hour`` rates,
        ``turnaround`` (``count``, ``median_s``, ``p90_s``), ``dead_export_attempts`` (of
        jobs still dead: a retried job's old attempts no longer count).
    """
    now = now or utcnow()
    since = now - WINDOW
    hours = WINDOW.total_seconds() / 3600
    with sessions() as session:
        by_status: dict[StudyStatus, int] = {
            status: int(n)
            for status, n in session.execute(
                select(Study.status, func.count(Study.id)).group_by(Study.status)
            )
        }
        instances = _instances_since(session, since)
        studies = session.scalar(
            select(func.count(Study.id)).where(Study.first_received_at >= since)
        )
        first_export = (
            select(AuditEvent.job_id, func.min(AuditEvent.at).label("at"))
            .where(AuditEvent.to_state == JobState.EXPORTED.value, AuditEvent.job_id.is_not(None))
            .group_by(AuditEvent.job_id)
            .subquery()
        )
        exported = session.execute(
            select(first_export.c.at, Study.first_received_at)
            .join(Job, Job.id == first_export.c.job_id)
            .join(Study, Study.id == Job.study_id)
            .where(first_export.c.at >= since)
        ).all()
        dead = session.scalar(
            select(func.count(ExportAttempt.id))
            .join(Job, Job.id == ExportAttempt.job_id)
            .where(ExportAttempt.status == ExportStatus.DEAD, Job.state == JobState.DEAD)
        )
    # SQLite hands back the aggregate as text; AuditEvent.at's type is lost in min().
    seconds = [
        (_as_utc(at) - received).total_seconds() for at, received in exported if at is not None
    ]
    median, p90 = _percentiles(seconds)
    return {
        "studies": {s.value: int(by_status.get(s, 0)) for s in StudyStatus},
        "window_hours": hours,
        "instances_received": int(instances or 0),
        "studies_received": int(studies or 0),
        "studies_exported": len(seconds),
        "instances_per_hour": round((instances or 0) / hours, 2),
        "studies_per_hour": round((studies or 0) / hours, 2),
        "exported_per_hour": round(len(seconds) / hours, 2),
        "turnaround": {"count": len(seconds), "median_s": median, "p90_s": p90},
        "dead_export_attempts": int(dead or 0),
    }


def _instances_since(session: Session, since: dt.datetime) -> int:
    """Count the instances received since ``since`` without reading every instance row.

    A CT site holds millions of instance rows and Received At has no index, so they are
    counted through the index on their study, among the studies active in the window only:
    every instance of a study that began in the window (well inside it, by
    `RECORDING_SLACK`) from the index alone, and those of the studies that span its start
    by their Received At.
    """
    began = select(Study.id).where(Study.first_received_at >= since + RECORDING_SLACK)
    spanning = select(Study.id).where(
        Study.first_received_at < since + RECORDING_SLACK,
        Study.last_received_at >= since - RECORDING_SLACK,
    )
    whole = session.scalar(select(func.count(Instance.id)).where(Instance.study_id.in_(began)))
    part = session.scalar(
        select(func.count(Instance.id)).where(
            Instance.study_id.in_(spanning), Instance.received_at >= since
        )
    )
    return int(whole or 0) + int(part or 0)


def _as_utc(value: Any) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    assert isinstance(value, dt.datetime)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def disk(spool_dir: Path, min_free_mb: int) -> dict[str, Any]:
    """Return the spool's free space against the watermark below which C-STORE is refused.

    Parameters
    ----------
    spool_dir : Path
        ``storage.spool_dir``.
    min_free_mb : int
        ``storage.min_free_mb``.

    Returns
    -------
    dict
        ``free_bytes``, ``total_bytes``, ``watermark_bytes``, ``headroom_bytes`` (free
        minus watermark) and ``ok``.
    """
    usage = shutil.disk_usage(spool_dir if spool_dir.exists() else spool_dir.parent)
    watermark = min_free_mb * 2**20
    return {
        "free_bytes": usage.free,
        "total_bytes": usage.total,
        "watermark_bytes": watermark,
        "headroom_bytes": usage.free - watermark,
        "ok": usage.free >= watermark,
    }


def warnings(
    settings: Settings,
    bundle: dict[str, Any],
    jobs: dict[str, int],
    dead_exports: int,
    space: dict[str, Any],
    depths: dict[str, int | None],
) -> list[str]:
    """Return the dashboard's warnings, most important first.

    Parameters
    ----------
    settings : Settings
        Queue mode.
    bundle : dict
        `BundleInfo.get`'s view.
    jobs : dict
        Job count per state.
    dead_exports : int
        Export attempts in the dead letter.
    space : dict
        `disk`'s view.
    depths : dict
        Queue depths (None: broker unreachable).

    Returns
    -------
    list of str
        One sentence each.
    """
    out: list[str] = []
    if bundle.get("loaded") and bundle.get("demo"):
        out.append(DEMO_WARNING)
    if not bundle.get("configured"):
        if settings.embedded_queue:
            out.append(
                "NO MODEL BUNDLE LOADED: studies are received and stored but not analysed "
                "(set models.bundle)"
            )
        else:
            out.append("no model bundle on this node: inference workers elsewhere analyse")
    elif not bundle.get("loaded"):
        out.append(f"model bundle failed verification: {bundle.get('error')}")
    if not space["ok"]:
        out.append(
            f"spool free space {space['free_bytes'] // 2**20} MiB is below the watermark "
            f"{space['watermark_bytes'] // 2**20} MiB: new instances are refused (0xA700)"
        )
    if dead_exports:
        out.append(f"{dead_exports} export attempt(s) in the dead letter (see Failures)")
    if jobs.get(JobState.DEAD.value):
        out.append(f"{jobs[JobState.DEAD.value]} job(s) dead after their last attempt")
    if any(v is None for v in depths.values()):
        out.append("the queue broker is not reachable: queue depths unknown")
    return out


def overview(
    settings: Settings, sessions: sessionmaker[Session], bundle: dict[str, Any]
) -> dict[str, Any]:
    """Return everything the dashboard shows.

    Parameters
    ----------
    settings : Settings
        Settings of this node.
    sessions : sessionmaker
        Database sessions.
    bundle : dict
        `BundleInfo.get`'s view.

    Returns
    -------
    dict
        ``queue_depths``, ``jobs`` (per state), ``oldest_waiting``, ``activity``,
        ``disk``, ``workers``, ``bundle``, ``destinations`` (what each receives and what
        each viewer family shows of it, `spinexr.node.admin.viewers`), ``warnings``,
        ``generated_at``.
    """
    jobs = job_status(sessions)
    depths = queue_depths_quick(settings)
    act = activity(sessions)
    space = disk(settings.storage.spool_dir, settings.storage.min_free_mb)
    return {
        "generated_at": utcnow(),
        "queue_depths": depths,
        "queue_mode": "embedded" if settings.embedded_queue else "external broker",
        "jobs": jobs["jobs"],
        "oldest_waiting": jobs["oldest_waiting"],
        "failed_export_attempts": jobs["failed_export_attempts"],
        "activity": act,
        "disk": space,
        "workers": workers_seen(settings, sessions, jobs["workers_seen_last_hour"]),
        "bundle": bundle,
        "destinations": destinations_view(settings),
        "warnings": warnings(
            settings, bundle, jobs["jobs"], act["dead_export_attempts"], space, depths
        ),
    }
