"""Prometheus metrics of one skald app, on a registry of its own.

prometheus-client's default registry is process-global; every app gets its
own :class:`~prometheus_client.CollectorRegistry` so tests and embedded apps
do not accumulate each other's series. Capability modules register their own
collectors on ``metrics.registry`` (see ``Metrics.counter`` and friends).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "skald_http_requests_total", "HTTP requests by route template, method and status",
            ["route", "method", "status"], registry=r,
        )
        self.request_duration = Histogram(
            "skald_http_request_duration_seconds", "HTTP request duration by route template",
            ["route", "method"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.rejected = Counter(
            "skald_requests_rejected_total", "Requests answered with an error, by problem code",
            ["code"], registry=r,
        )
        self.actors_open = Gauge("skald_actors_open", "Document actors currently running", registry=r)
        self.actors_started = Counter("skald_actors_started_total", "Document actors started", registry=r)
        self.actors_stopped = Counter(
            "skald_actors_stopped_total", "Document actors stopped, by reason", ["reason"], registry=r
        )
        self.mailbox_depth = Gauge(
            "skald_mailbox_depth", "Operations queued in a document's mailbox", ["db_id"], registry=r
        )
        self.mailbox_capacity = Gauge(
            "skald_mailbox_capacity", "Mailbox size of every document actor", registry=r
        )
        self.mailbox_full = Counter(
            "skald_mailbox_full_total", "Operations refused because a mailbox was full", registry=r
        )
        self.commit_batch = Histogram(
            "skald_commit_batch_size", "Write operations per group commit", buckets=_BATCH_BUCKETS, registry=r
        )
        self.commit_duration = Histogram(
            "skald_commit_duration_seconds", "Duration of one group commit (BEGIN..COMMIT)",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.writer_restarts = Counter(
            "skald_writer_restarts_total",
            "Write connections replaced after the connection itself failed mid-batch", registry=r,
        )
        self.op_failures = Counter(
            "skald_op_failures_total", "Operations that failed inside a document actor", ["kind"], registry=r
        )
        self.documents = Gauge("skald_documents", "Documents in the registry", registry=r)
        self.data_dir_free = Gauge(
            "skald_data_dir_free_bytes", "Free bytes on the data folder's filesystem", registry=r
        )
        self.data_dir_size = Gauge(
            "skald_data_dir_size_bytes", "Total bytes of the data folder's filesystem", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
