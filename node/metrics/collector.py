"""The Prometheus collector: the node's counters and gauges, computed from the database.

``serve`` and every worker write to the same database, so the totals there are the truth
whichever process did the work: each scrape runs a few aggregate queries (counts per group,
bucket sums) instead of keeping counters in one process's memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, Engine, extract, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from spinexr.node import __version__
from spinexr.node.db.models import ExportAttempt, Instance, Job, Result, Study
from spinexr.node.db.states import ExportStatus, JobState
from spinexr.node.metrics.histograms import (
    EXPORT_BUCKETS,
    PROBABILITY_BUCKETS,
    Histogram,
    ResultObservations,
    histogram_family,
    sql_histograms,
)
from spinexr.node.settings import Settings

logger = logging.getLogger(__name__)

FAILED_EXPORTS = (ExportStatus.FAILED, ExportStatus.DEAD)


class NodeCollector(Collector):
    """Collects the node's metrics at scrape time.

    Parameters
    ----------
    settings : Settings
        Destinations (listed with zero failures before their first export).
    engine : callable
        Returns the database engine.
    queue_depths : callable
        Returns messages waiting per queue, or None when the broker does not answer in time.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Callable[[], Engine],
        queue_depths: Callable[[], dict[str, int] | None],
    ) -> None:
        self.settings = settings
        self._engine = engine
        self._queue_depths = queue_depths
        self.observations = ResultObservations()

    def collect(self) -> Iterator[Metric]:
        """Yield every metric family (called by the registry on each scrape)."""
        info = GaugeMetricFamily(
            "spinexr_build_info", "The node's version (value 1).", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        families: list[Metric] = []
        up = 1
        try:
            with Session(self._engine()) as session:
                families = self._database_families(session)
        except SQLAlchemyError as exc:
            logger.warning("metrics: database query failed: %s", type(exc).__name__)
            up = 0
        yield GaugeMetricFamily(
            "spinexr_database_up", "1 when the database answered this scrape's queries.", up
        )
        yield from families
        yield from self._queue_families()

    def _database_families(self, session: Session) -> list[Metric]:
        out: list[Metric] = []
        received = CounterMetricFamily(
            "spinexr_instances_received_total",
            "Instances stored (DIMSE C-STORE or STOW-RS), new versions included.",
            labels=["source"],
        )
        received_bytes = CounterMetricFamily(
            "spinexr_instances_received_bytes_total",
            "Bytes of the instances stored.",
            labels=["source"],
        )
        rows = session.execute(
            select(
                Instance.source, func.count(), func.coalesce(func.sum(Instance.size_bytes), 0)
            ).group_by(Instance.source)
        ).all()
        for source, count, size in rows:
            received.add_metric([str(source)], count)
            received_bytes.add_metric([str(source)], size)
        out += [received, received_bytes]

        studies = session.scalar(select(func.count()).select_from(Study)) or 0
        out.append(
            CounterMetricFamily(
                "spinexr_studies_received_total", "Studies with at least one instance.", studies
            )
        )
        completed = CounterMetricFamily(
            "spinexr_studies_completed_total",
            "Study analyses completed, by outcome (abnormal, no_finding, failed).",
            labels=["outcome"],
        )
        outcomes: dict[str, int] = {}
        for outcome, count in session.execute(
            select(Result.outcome, func.count()).group_by(Result.outcome)
        ):
            key = str(outcome).lower()  # StudyResult outcomes are stored as ABNORMAL, ...
            outcomes[key] = outcomes.get(key, 0) + count
        for outcome, count in sorted(outcomes.items()):
            completed.add_metric([outcome], count)
        out.append(completed)

        jobs = GaugeMetricFamily("spinexr_jobs", "Jobs in each state now.", labels=["state"])
        by_state = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        for state in JobState:
            jobs.add_metric([state.value], by_state.get(state, 0))
        out.append(jobs)

        out += self._export_families(session)

        study_p = sql_histograms(session, Result.probability, PROBABILITY_BUCKETS)
        out.append(
            histogram_family(
                "spinexr_study_abnormality_probability",
                "Study-level abnormality probability of every analysed study.",
                [],
                study_p or {(): Histogram(PROBABILITY_BUCKETS)},
            )
        )
        self.observations.update(session)
        out += self.observations.families()
        return out

    def _export_families(self, session: Session) -> list[Metric]:
        attempts = CounterMetricFamily(
            "spinexr_export_attempts_total",
            "Objects sent to a destination, by outcome of the attempt.",
            labels=["destination", "status"],
        )
        failures: dict[str, int] = {d.name: 0 for d in self.settings.destinations}
        rows = session.execute(
            select(ExportAttempt.destination, ExportAttempt.status, func.count()).group_by(
                ExportAttempt.destination, ExportAttempt.status
            )
        ).all()
        for destination, status, count in rows:
            attempts.add_metric([destination, ExportStatus(status).value], count)
            if status in FAILED_EXPORTS:
                failures[destination] = failures.get(destination, 0) + count
            else:
                failures.setdefault(destination, 0)
        failed = CounterMetricFamily(
            "spinexr_export_failures_total",
            "Objects a destination did not accept (failed or dead-lettered attempts).",
            labels=["destination"],
        )
        for destination, count in sorted(failures.items()):
            failed.add_metric([destination], count)

        seconds = _seconds_between(
            session.get_bind().dialect.name,
            func.min(ExportAttempt.started_at),
            func.max(ExportAttempt.finished_at),
        )
        rounds = (
            select(ExportAttempt.destination.label("destination"), seconds.label("seconds"))
            .where(ExportAttempt.finished_at.is_not(None))
            .group_by(ExportAttempt.job_id, ExportAttempt.destination, ExportAttempt.attempt)
            .subquery()
        )
        durations = sql_histograms(
            session, rounds.c.seconds, EXPORT_BUCKETS, labels=[rounds.c.destination]
        )
        duration = histogram_family(
            "spinexr_export_duration_seconds",
            "Seconds of one export round to one destination (send and read-back).",
            ["destination"],
            durations,
        )
        return [attempts, failed, duration]

    def _queue_families(self) -> Iterator[Metric]:
        depths = self._queue_depths()
        yield GaugeMetricFamily(
            "spinexr_broker_up",
            "1 when the broker answered within the scrape.",
            int(depths is not None),
        )
        if depths:
            gauge = GaugeMetricFamily(
                "spinexr_queue_messages", "Messages waiting in each queue.", labels=["queue"]
            )
            for name, count in depths.items():
                gauge.add_metric([name], count)
            yield gauge


def _seconds_between(
    dialect: str, start: ColumnElement[Any], end: ColumnElement[Any]
) -> ColumnElement[Any]:
    """Return ``end - start`` in seconds as SQL (SQLite stores times as text)."""
    if dialect == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return extract("epoch", end - start)
