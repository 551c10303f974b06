"""Prometheus metrics for ``/metrics``: one registry per application, computed from the DB.

Metric names follow the Prometheus conventions (``spinexr_`` prefix, ``_total`` counters,
``_seconds`` and other base units); ``docs/operations.md`` lists them.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from sqlalchemy import Engine

from spinexr.node.metrics.collector import NodeCollector
from spinexr.node.settings import Settings


def make_registry(
    settings: Settings,
    engine: Callable[[], Engine],
    queue_depths: Callable[[], dict[str, int] | None],
) -> CollectorRegistry:
    """Return a new registry with the node's collector and the process/Python collectors.

    A registry per application (not prometheus_client's global one) keeps applications —
    and tests — from sharing state.

    Parameters
    ----------
    settings : Settings
        Validated settings.
    engine : callable
        Returns the database engine.
    queue_depths : callable
        Returns messages waiting per queue, or None when the broker does not answer.

    Returns
    -------
    CollectorRegistry
        The registry to expose.
    """
    registry = CollectorRegistry()
    registry.register(NodeCollector(settings, engine, queue_depths))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
