"""The per-app state every route reaches through :func:`get_state`."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from prometheus_client import Counter
from quart import current_app

from skald.auth.usage import TokenUsage
from skald.config import Settings
from skald.db.supervisor import Supervisor
from skald.leases.service import LeaseService
from skald.metrics import Metrics
from skald.relay.channels import RelayHub, RequestChannels
from skald.server.shutdown import Shutdown

if TYPE_CHECKING:
    # Only for annotations: these modules import this one (routes reach services through get_state).
    from skald.auth.guard import SessionResolver, TokenCache
    from skald.auth.oidc import OidcClient
    from skald.blobs.gc import GarbageCollector
    from skald.blobs.service import BlobService
    from skald.cluster.service import Cluster
    from skald.db.background import JobQueue, JobWorker
    from skald.http.throttle import Throttle
    from skald.jobs.service import JobService
    from skald.libsql.service import LibsqlService
    from skald.mqtt.service import MqttService
    from skald.pubsub.service import PubSub
    from skald.query.metrics import QueryMetrics
    from skald.query.service import QueryService
    from skald.query.watch import WatchHub
    from skald.sync.service import SyncService
    from skald.web.service import DocumentBrowser
    from skald.webhooks.service import WebhookInbox


@dataclasses.dataclass
class AppState:
    """The app's settings, runtime and services, one typed field each.

    Fields with ``init=False`` and no default are set by their route module's ``install`` (listed in
    :func:`skald.http.app.create_app`); reading one whose installer did not run is an ``AttributeError``
    naming it, not a ``None`` that fails later. ``Optional`` fields are the ones that exist only
    sometimes (configured, or created on first use).
    """

    settings: Settings
    metrics: Metrics
    supervisor: Supervisor
    started_at: float = dataclasses.field(default_factory=time.time)
    shutdown: Shutdown = dataclasses.field(default_factory=Shutdown)
    # Leases: the service (tests swap in one with a manual clock) and its operation counter.
    leases: LeaseService = dataclasses.field(init=False)
    lease_operations: Counter = dataclasses.field(init=False)
    # The legacy relay's rendezvous points, served ahead of Quart (skald.relay.legacy); built from shutdown.
    relay: RelayHub = dataclasses.field(init=False)
    relay_requests: RequestChannels = dataclasses.field(init=False)
    # Auth: looked-up tokens (created on first lookup), the browser session check (skald.auth.identity),
    # the OIDC relying party (rebuilt when settings change), the admin token printed on first start.
    token_cache: TokenCache | None = None
    token_usage: TokenUsage = dataclasses.field(default_factory=TokenUsage)  # last_used_at, written in batches
    session_resolver: SessionResolver | None = None
    oidc_client: OidcClient | None = None
    bootstrap_admin_token: str | None = None
    # None when the limiter is off (rate_limit_per_second <= 0).
    throttle: Throttle | None = None
    pubsub: PubSub = dataclasses.field(init=False)
    sync: SyncService = dataclasses.field(init=False)
    query: QueryService = dataclasses.field(init=False)
    query_watch_hub: WatchHub = dataclasses.field(init=False)
    query_metrics: QueryMetrics = dataclasses.field(init=False)
    webhooks: WebhookInbox = dataclasses.field(init=False)
    webhook_deliveries: Counter = dataclasses.field(init=False)
    blobs: BlobService = dataclasses.field(init=False)
    jobs: JobQueue = dataclasses.field(init=False)
    job_worker: JobWorker = dataclasses.field(init=False)
    # Durable job queues in documents (skald.jobs.service; tests swap in one with a manual clock).
    job_queues: JobService = dataclasses.field(init=False)
    libsql: LibsqlService = dataclasses.field(init=False)
    # None unless object storage is configured.
    blob_gc: GarbageCollector | None = None
    # The web face's document browser (skald.web.routes).
    web: DocumentBrowser = dataclasses.field(init=False)
    # None unless mqtt_port is set (skald.mqtt.routes).
    mqtt: MqttService | None = None
    # None unless this node is part of a cluster (cluster_node_id set; skald.cluster).
    cluster: Cluster | None = None

    def __post_init__(self) -> None:
        self.leases = LeaseService(self.supervisor)
        self.relay = RelayHub(self.shutdown)
        self.relay_requests = RequestChannels(self.shutdown)


def get_state() -> AppState:
    state: AppState = current_app.extensions["skald"]
    return state
