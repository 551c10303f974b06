"""Histograms computed from the database: SQL bucket counts, and result payloads observed once.

Values kept in columns (study probability, export durations) are bucketed by one aggregate
query per scrape. Values inside the JSON payload of each result (per-stage timings, image
probabilities) are read once per result row by :class:`ResultObservations` and accumulated
in memory, so a scrape reads only the results that are new since the previous one.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import QueryableAttribute, Session

from spinexr.node.db.models import Result

STAGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Seconds per pipeline stage of one study."""

EXPORT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Seconds of one export round to one destination."""

PROBABILITY_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
"""Abnormality probabilities, 0.05 wide."""


@dataclass
class Histogram:
    """Bucket counts (not cumulative), count and sum of observed values.

    Attributes
    ----------
    bounds : tuple of float
        Upper bounds (``le``), increasing; ``+Inf`` is implicit.
    counts : list of int
        Observations per bucket, the last one above every bound.
    total : float
        Sum of observations.
    """

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        """Add one observation."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    @classmethod
    def from_cumulative(
        cls, bounds: tuple[float, ...], cumulative: Sequence[int], count: int, total: float
    ) -> Histogram:
        """Build from cumulative counts (``value <= bound``) as SQL returns them."""
        counts, previous = [], 0
        for c in cumulative:
            counts.append(int(c) - previous)
            previous = int(c)
        counts.append(int(count) - previous)
        return cls(bounds, counts, float(total))

    def buckets(self) -> list[tuple[str, float]]:
        """Return cumulative ``(le, count)`` pairs ending with ``+Inf``."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((floatToGoString(bound), float(running)))
        return out


def histogram_family(
    name: str, documentation: str, labels: Sequence[str], hists: Mapping[tuple[str, ...], Histogram]
) -> HistogramMetricFamily:
    """Return a Prometheus histogram family with one child per label tuple.

    Parameters
    ----------
    name : str
        Metric name (without ``_bucket``/``_count``/``_sum``).
    documentation : str
        Help text.
    labels : sequence of str
        Label names.
    hists : mapping
        Label values → histogram.

    Returns
    -------
    HistogramMetricFamily
        The family (empty children are kept out).
    """
    family = HistogramMetricFamily(name, documentation, labels=list(labels))
    for values, hist in sorted(hists.items()):
        family.add_metric(list(values), hist.buckets(), hist.total)
    return family


def sql_histograms(
    session: Session,
    value: ColumnElement[Any] | QueryableAttribute[Any],
    bounds: tuple[float, ...],
    *,
    labels: Sequence[ColumnElement[Any]] = (),
    where: Iterable[ColumnElement[bool]] = (),
) -> dict[tuple[str, ...], Histogram]:
    """Bucket a column with one aggregate query (``SUM(CASE WHEN value <= bound ...)``).

    Parameters
    ----------
    session : Session
        Open session.
    value : ColumnElement
        The observed value (NULLs are left out); a column of a table or of a subquery.
    bounds : tuple of float
        Bucket upper bounds.
    labels : sequence of ColumnElement
        Columns to group by (the label values).
    where : iterable of ColumnElement
        Extra conditions.

    Returns
    -------
    dict
        Label values → histogram.
    """
    columns = [
        *labels,
        func.count(value),
        func.coalesce(func.sum(value), 0.0),
        *(func.sum(case((value <= bound, 1), else_=0)) for bound in bounds),
    ]
    stmt = select(*columns).where(value.is_not(None), *where)
    if labels:
        stmt = stmt.group_by(*labels)
    out: dict[tuple[str, ...], Histogram] = {}
    n = len(labels)
    for row in session.execute(stmt):
        count = int(row[n] or 0)
        if count == 0:
            continue
        key = tuple(str(v) for v in row[:n])
        cumulative = [int(c or 0) for c in row[n + 2 :]]
        out[key] = Histogram.from_cumulative(bounds, cumulative, count, float(row[n + 1]))
    return out


class ResultObservations:
    """Per-stage timings and image probabilities from result payloads, each row read once.

    The payload is a :class:`spinexr.pipeline.results.StudyResult` as JSON: ``timings``
    (seconds per stage: ``preprocess``, ``classifier.<arch>``, ``detector``, ``fusion``,
    ``total``) and ``images[].probability``. A result row is observed when first seen; a
    job analysed again in place (same row) is not observed twice.

    Parameters
    ----------
    batch : int
        Most result rows read per scrape (a large database is caught up over a few scrapes).
    """

    def __init__(self, batch: int = 2000) -> None:
        self.batch = batch
        self._seen: set[int] = set()
        self._lock = threading.Lock()
        self.stages: dict[tuple[str, ...], Histogram] = {}
        self.images = Histogram(PROBABILITY_BUCKETS)

    def update(self, session: Session) -> int:
        """Read the payloads of results not seen yet (at most ``batch``).

        Parameters
        ----------
        session : Session
            Open session.

        Returns
        -------
        int
            Rows read.
        """
        with self._lock:
            ids = set(session.scalars(select(Result.id)))
            new = sorted(ids - self._seen)[: self.batch]
            for start in range(0, len(new), 500):
                chunk = new[start : start + 500]
                rows = session.execute(
                    select(Result.id, Result.payload).where(Result.id.in_(chunk))
                )
                for rid, payload in rows:
                    self._observe(payload if isinstance(payload, dict) else {})
                    self._seen.add(rid)
            return len(new)

    def _observe(self, payload: Mapping[str, Any]) -> None:
        timings = payload.get("timings") or {}
        if isinstance(timings, dict):
            for stage, seconds in timings.items():
                if isinstance(seconds, int | float):
                    hist = self.stages.setdefault((str(stage),), Histogram(STAGE_BUCKETS))
                    hist.observe(float(seconds))
        for image in payload.get("images") or []:
            p = image.get("probability") if isinstance(image, dict) else None
            if isinstance(p, int | float):
                self.images.observe(float(p))

    def families(self) -> list[HistogramMetricFamily]:
        """Return the stage and image-probability histograms."""
        with self._lock:
            stages = {
                k: Histogram(h.bounds, list(h.counts), h.total) for k, h in self.stages.items()
            }
            images = Histogram(self.images.bounds, list(self.images.counts), self.images.total)
        return [
            histogram_family(
                "spinexr_stage_duration_seconds",
                "Seconds per pipeline stage of one analysed study (from the stored result).",
                ["stage"],
                stages,
            ),
            histogram_family(
                "spinexr_image_abnormality_probability",
                "Image-level abnormality probability of every analysed image.",
                [],
                {(): images},
            ),
        ]
