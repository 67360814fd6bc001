"""Prometheus collectors of the query API, on the app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class QueryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "skald_query_duration_seconds",
            "Time to answer /query and /query/batch, by statement class (read, write, admin)",
            ["kind"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.watches = Gauge("skald_query_watches", "Open query watches (SSE)", registry=registry)
        self.watch_runs = Counter(
            "skald_query_watch_runs_total",
            "Query watch evaluations (shared runs count once per watch)",
            registry=registry,
        )
