"""Cluster membership and document ownership: etcd leases, fences, restore-before-serve.

A node holds one etcd lease (``cluster_lease_seconds``) kept alive a few times per TTL. Owning a
document means having created its owner key ``/skald/owners/{db_id}`` under that lease; the key's
create revision is the owner's **fence** (strictly increasing per document, since etcd revisions
are global and monotonic). The lease carries every owner key of the node: when the node dies or is
partitioned the lease expires and all its documents become free at once.

Self-fencing: the node computes how long its lease is certainly alive (the time it *sent* the
last successful keep-alive plus the TTL etcd granted) and stops serving and acknowledging writes
``cluster_fence_margin_seconds`` before that. So a node frozen (SIGSTOP) or cut off past its
lease, then resumed, finds its ownership gone before it can acknowledge anything, even before its
watchdog task runs: :meth:`Cluster.owns` compares clocks on every call.

Taking a document: create the owner key (a transaction: only if absent), read the document's
registry key ``/skald/docs/{db_id}`` (its latest generation, the previous owner's fence), restore
that generation from S3 unless the local copy is that generation, then record the new generation
(a transaction fenced on our owner key) and replicate to the new generation's prefix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from skald.cluster.etcd import EtcdClient, EtcdUnavailable
from skald.cluster.replication import Litestream, replica_url
from skald.cluster.tokens import TOKENS, TokenMirror, read_row
from skald.config import Settings
from skald.db.actor import DocumentActor
from skald.db.supervisor import Supervisor
from skald.errors import DocumentNotFound, DocumentUnavailable
from skald.metrics import Metrics

if TYPE_CHECKING:
    from skald.cluster.forward import Forwarder

log = structlog.get_logger("skald.cluster")

OWNERS = "/skald/owners/"
DOCS = "/skald/docs/"
NODES = "/skald/nodes/"


class NotOwner(DocumentUnavailable):
    code = "not_owner"
    title = "This node does not own the document"


class OwnerUnavailable(DocumentUnavailable):
    code = "owner_unavailable"
    title = "The node owning the document cannot be reached"


@dataclasses.dataclass
class Claim:
    db_id: str
    fence: int
    replicating: bool = False


class ClusterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.owned = Gauge("skald_cluster_documents_owned", "Documents this node owns", registry=registry)
        self.renewals = Counter("skald_cluster_lease_renewals_total", "Successful lease keep-alives", registry=registry)
        self.renewal_failures = Counter(
            "skald_cluster_lease_renewal_failures_total", "Lease keep-alives that failed", registry=registry
        )
        self.fenced = Counter(
            "skald_cluster_self_fenced_total", "Times the node dropped every document (lease not renewed)",
            registry=registry,
        )
        self.lease_remaining = Gauge(
            "skald_cluster_lease_remaining_seconds", "Seconds the node may still act as owner", registry=registry
        )
        self.takeovers = Counter(
            "skald_cluster_takeovers_total", "Documents taken, by whether they were restored from S3",
            ["restored"], registry=registry,
        )
        self.sync_confirm = Histogram(
            "skald_cluster_replication_confirm_seconds",
            "Time for Litestream to confirm a group commit is in S3 (durability = replicated)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=registry,
        )
        self.last_sync = Gauge(
            "skald_cluster_last_confirmed_sync_timestamp_seconds", "Wall time of the last confirmed sync",
            registry=registry,
        )
        self.forwarded = Counter(
            "skald_cluster_forwarded_requests_total", "Requests forwarded to the owning node, by outcome",
            ["outcome"], registry=registry,
        )


class Cluster:
    """One node's view of the cluster. Started by :meth:`serve` (``nursery.start``), ended by :meth:`leave`."""

    def __init__(self, settings: Settings, supervisor: Supervisor, metrics: Metrics) -> None:
        assert settings.cluster_node_id is not None
        self.metrics_root = metrics
        self.settings = settings
        self.node_id = settings.cluster_node_id
        self.supervisor = supervisor
        self.metrics = ClusterMetrics(metrics.registry)
        endpoints = [e.strip() for e in settings.cluster_etcd_endpoints.split(",") if e.strip()]
        self.etcd = EtcdClient(endpoints)
        # Keep-alives on a client of their own: a burst of ownership lookups must not delay them.
        self._lease_etcd = EtcdClient(endpoints, timeout=settings.cluster_lease_seconds / 2)
        self.litestream = Litestream(settings, settings.data_dir / "cluster")
        self.url = settings.cluster_advertise_url or ""
        self._lease = 0
        self._valid_until = -math.inf
        self._claims: dict[str, Claim] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._cancel = trio.CancelScope()
        # The cluster's directory, followed from etcd by a watch (a few ms behind it): every
        # document, and each owned document's owner. Lookups that only route read it.
        self.documents: set[str] = set()
        self.owners: dict[str, tuple[str, int]] = {}  # db_id -> (owner URL, its lease)
        self.nodes: dict[str, str] = {}
        self.tokens = TokenMirror(lambda: supervisor.service)
        self.forwarder: Forwarder | None = None  # set by skald.cluster.routes.install
        self.started_at = time.time()

    # ---- lifecycle --------------------------------------------------------------------------------

    async def serve(self, url: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start Litestream, take the node lease and keep it alive until :meth:`leave`."""
        self.url = self.settings.cluster_advertise_url or url
        with self._cancel:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.litestream.serve)
                nursery.start_soon(self.tokens.serve)
                await nursery.start(self._follow)
                await self._join()
                nursery.start_soon(self._keep_alive)
                nursery.start_soon(self._watchdog)
                task_status.started()
                log.info("joined the cluster", node=self.node_id, url=self.url)

    async def _join(self) -> None:
        if self._lease:  # re-joining after a lapse: free the old lease's owner keys now, not at its expiry
            with contextlib.suppress(EtcdUnavailable):
                await self.etcd.revoke(self._lease)
        sent = trio.current_time()
        self._lease = await self.etcd.grant(self.settings.cluster_lease_seconds)
        self._valid_until = sent + self.settings.cluster_lease_seconds - self.settings.cluster_fence_margin_seconds
        await self.etcd.put(NODES + self.node_id, json.dumps({"url": self.url}), lease=self._lease)

    async def leave(self) -> None:
        """Release every document (after a last sync) and the lease; called after the actors stopped."""
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            for claim in list(self._claims.values()):
                path = self.settings.document_path(claim.db_id)
                if claim.replicating:
                    with contextlib.suppress(DocumentUnavailable):
                        await self.litestream.sync(path, wait_seconds=5)
                        await self.litestream.unregister(path)
            self._claims.clear()
            if self._lease:
                with contextlib.suppress(EtcdUnavailable):
                    await self.etcd.revoke(self._lease)  # frees every owner key at once, no TTL wait
            self._valid_until = -math.inf
        self._cancel.cancel(reason="node left the cluster")
        await self.etcd.aclose()
        await self._lease_etcd.aclose()

    async def _follow(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep :attr:`documents`, :attr:`owners` and :attr:`nodes` in step with etcd."""
        started = False
        while True:
            try:
                kvs, revision = await self.etcd.snapshot("/skald/")
                self.documents, self.owners, self.nodes = set(), {}, {}
                for kv in kvs:
                    self._apply("PUT", kv)
                if not started:
                    task_status.started()
                    started = True
                async with contextlib.aclosing(self.etcd.watch("/skald/", revision + 1)) as events:
                    async for kind, kv in events:
                        self._apply(kind, kv)
            except EtcdUnavailable as exc:
                if not started:
                    raise
                log.warning("directory watch interrupted", error=str(exc))
            await trio.sleep(0.2)  # etcd is down or restarting: read everything again shortly

    def _apply(self, kind: str, kv: Any) -> None:
        key: str = kv.key
        if key.startswith(TOKENS):
            if kind == "PUT":
                self.tokens.seen(kv.value)
            return
        for prefix, table in ((DOCS, None), (OWNERS, self.owners), (NODES, self.nodes)):
            if not key.startswith(prefix):
                continue
            name = key.removeprefix(prefix)
            if kind == "DELETE":
                if table is None:
                    self.documents.discard(name)
                else:
                    table.pop(name, None)
            elif table is None:
                self.documents.add(name)
            elif table is self.owners:
                self.owners[name] = (json.loads(kv.value)["url"], kv.lease)
            else:
                self.nodes[name] = json.loads(kv.value)["url"]

    async def _keep_alive(self) -> None:
        interval = self.settings.cluster_lease_seconds / 5
        while True:
            sent = trio.current_time()
            try:
                with trio.fail_after(interval * 2):
                    ttl = await self._lease_etcd.keep_alive(self._lease)
            except (EtcdUnavailable, trio.TooSlowError) as exc:
                self.metrics.renewal_failures.inc()
                log.warning("lease renewal failed", error=str(exc))
                ttl = -1.0
            if ttl > 0:
                self.metrics.renewals.inc()
                self._valid_until = max(self._valid_until, sent + ttl - self.settings.cluster_fence_margin_seconds)
            elif ttl == 0:  # the lease is gone in etcd: our owner keys went with it
                self.fence("lease expired in etcd")
                with contextlib.suppress(EtcdUnavailable):
                    await self._join()
            elif not self.valid():
                with contextlib.suppress(EtcdUnavailable):
                    await self._join()
            self.metrics.lease_remaining.set(max(0.0, self._valid_until - trio.current_time()))
            await trio.sleep(interval)

    async def _watchdog(self) -> None:
        while True:
            with trio.move_on_at(self._valid_until):
                await trio.sleep_forever()
            if not self.valid() and self._claims:
                self.fence("lease not renewed in time")
            await trio.sleep(self.settings.cluster_lease_seconds / 8)

    def valid(self) -> bool:
        return trio.current_time() < self._valid_until

    def fence(self, reason: str) -> None:
        """Stop serving every owned document at once (the lease may expire elsewhere soon)."""
        if not self._claims:
            return
        log.warning("self-fencing: dropping every owned document", reason=reason, documents=len(self._claims))
        self.metrics.fenced.inc()
        dropped = list(self._claims)
        self._claims.clear()
        self.metrics.owned.set(0)
        for db_id in dropped:
            actor = self.supervisor.open_actors.get(db_id)
            if actor is not None:
                actor.stop("fenced")
        self._valid_until = min(self._valid_until, trio.current_time())

    # ---- ownership ----------------------------------------------------------------------------------

    def owns(self, db_id: str) -> Claim | None:
        """The claim on ``db_id`` if this node may serve it right now (checked against the clock)."""
        if not self.valid():
            if self._claims:
                self.fence("lease deadline passed")
            return None
        return self._claims.get(db_id)

    async def place(self, db_id: str, *, creating: bool = False) -> str | None:
        """Where ``db_id`` is served: ``None`` for this node (taking it if free), else the owner's URL.

        A document not in the cluster registry is taken only when ``creating`` (``PUT`` of the
        document); otherwise :class:`DocumentNotFound` (404), never a local copy. Raises
        :class:`NotOwner` while this node is fenced and :class:`EtcdUnavailable` when etcd is down.
        """
        if self.owns(db_id):
            return None
        lock = self._locks.setdefault(db_id, trio.Lock())
        async with lock:
            if self.owns(db_id):
                return None
            if db_id not in self.documents and not creating:
                # Unknown in the cluster (as of the watch, ms behind). Never the local copy: it may be a
                # stale one of a document deleted (or owned) elsewhere.
                raise DocumentNotFound(f"document {db_id} does not exist")
            known = self.owners.get(db_id)
            if known is not None and known[1] != self._lease:
                return known[0]  # forwarded; if that node let go meanwhile it answers not_owner
            if not self.valid():  # fenced: may not take anything
                raise NotOwner("this node's cluster lease lapsed; it is re-joining, retry", retry_after=1)
            registry = await self.etcd.get(DOCS + db_id)
            if registry is None and not creating:
                raise DocumentNotFound(f"document {db_id} does not exist")
            owner = json.dumps({"node": self.node_id, "url": self.url})
            result = await self.etcd.create(OWNERS + db_id, owner, lease=self._lease)
            current = result.current
            if current is None:
                raise EtcdUnavailable("etcd lost the owner key it just wrote")
            if not result.created and current.lease != self._lease:
                url: str = json.loads(current.value)["url"]
                return url
            await self._take(db_id, current.create_revision, registry.value if registry else None)
        return None

    async def _take(self, db_id: str, fence: int, registry: str | None) -> None:
        previous = int(json.loads(registry)["generation"]) if registry else 0
        path = self.settings.document_path(db_id)
        marker = path.with_name(path.name + ".generation")
        local = int(marker.read_text()) if marker.exists() else None
        actor = self.supervisor.open_actors.get(db_id)
        if actor is not None:  # open from an earlier ownership (or as a relay namespace): reopen after
            actor.stop("ownership changed")
            await actor.stopped.wait()
        restored = False
        if previous and local != previous:
            _remove_document_files(path)
            restored = await self.litestream.restore(replica_url(self.settings, db_id, previous), path)
            log.info("document restored from S3", generation=previous, restored=restored, db_id=db_id)
        if registry is not None:
            ok = await self.etcd.put_if_owned(
                DOCS + db_id, json.dumps({"generation": fence}), owner_key=OWNERS + db_id, owner_revision=fence
            )
            if not ok:
                raise NotOwner(f"lost document {db_id} while taking it; retry", retry_after=1)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(fence))
            await self.supervisor.adopt(db_id)
        self._claims[db_id] = Claim(db_id, fence)
        self.metrics.owned.set(len(self._claims))
        self.metrics.takeovers.labels(str(restored).lower()).inc()

    # ---- supervisor hooks (skald.db.supervisor.Placement) --------------------------------------------

    async def activate(self, actor: DocumentActor) -> None:
        """An actor started: replicate its document if we own it, and gate its acknowledgements."""
        actor.commit_gate = self._gate
        claim = self.owns(actor.db_id)
        if claim is None or claim.replicating:
            return
        path = self.settings.document_path(actor.db_id)
        with contextlib.suppress(DocumentUnavailable):  # registered by an earlier actor of this claim
            await self.litestream.unregister(path)
        await self.litestream.register(path, replica_url(self.settings, actor.db_id, claim.fence))
        claim.replicating = True

    async def registered(self, db_id: str) -> None:
        """A document was created here: record it (generation = our fence) in the cluster registry."""
        claim = self.owns(db_id)
        generation = claim.fence if claim else 0
        await self.etcd.create(DOCS + db_id, json.dumps({"generation": generation}))
        if claim is not None:
            path = self.settings.document_path(db_id)
            path.with_name(path.name + ".generation").write_text(str(claim.fence))

    async def deleted(self, db_id: str) -> None:
        await self.etcd.delete(DOCS + db_id)
        claim = self._claims.pop(db_id, None)
        if claim is not None:
            if claim.replicating:
                with contextlib.suppress(DocumentUnavailable):
                    await self.litestream.unregister(self.settings.document_path(db_id))
            await self.etcd.delete(OWNERS + db_id)
            self.metrics.owned.set(len(self._claims))

    async def _gate(self, actor: DocumentActor) -> None:
        """Between a group commit and its acknowledgements: replicated, and still ours?"""
        claim = self.owns(actor.db_id)
        if claim is None:
            raise NotOwner(
                f"this node no longer owns {actor.db_id}; the write was not acknowledged, retry", retry_after=1
            )
        if self.settings.durability == "replicated":
            started = time.perf_counter()
            with trio.move_on_after(self.settings.cluster_lease_seconds * 2) as scope:
                await self.litestream.sync(actor.path)
            if scope.cancelled_caught:
                raise NotOwner("replication was not confirmed in time; the write was not acknowledged, retry")
            self.metrics.sync_confirm.observe(time.perf_counter() - started)
            self.metrics.last_sync.set(time.time())
        if self.owns(actor.db_id) is not claim:
            raise NotOwner(
                f"this node lost {actor.db_id} before the write was confirmed; it was not acknowledged, retry",
                retry_after=1,
            )

    async def share_token(self, token_id: str) -> None:
        """Publish the local row of ``token_id`` (after a mint or a revocation) to every node."""
        row = await self.supervisor.service.read(lambda conn: read_row(conn, token_id))
        if row is not None:
            await self.etcd.put(TOKENS + token_id, json.dumps(row))

    # ---- reads ---------------------------------------------------------------------------------------

    def list_documents(self) -> list[str]:
        """Every document of the cluster (the registry in etcd, as the watch last saw it)."""
        return sorted(self.documents)

    async def status(self) -> dict[str, Any]:
        """``/status``'s ``cluster`` block; ``replication`` is Litestream's last sync of each owned document."""
        replicating = {
            Path(str(d.get("path", ""))).name.removesuffix(".sqlite3"): d.get("last_sync_at")
            for d in await self.litestream.databases()
        }
        return {
            "node_id": self.node_id,
            "url": self.url,
            "durability": self.settings.durability,
            "lease_remaining_seconds": round(max(0.0, self._valid_until - trio.current_time()), 3),
            "documents_owned": len(self._claims),
            "cluster_documents": len(self.documents),
            "nodes": dict(sorted(self.nodes.items())),
            "lease_renewals": int(self.metrics.renewals._value.get()),
            "lease_failures": int(self.metrics.renewal_failures._value.get()),
            "last_confirmed_sync": self.litestream.last_confirmed_sync,
            "replication": dict(sorted(replicating.items())),
        }


def _remove_document_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal", ".generation"):
        with contextlib.suppress(FileNotFoundError):
            (path.parent / (path.name + suffix)).unlink()
    meta = path.parent / f".{path.name}-litestream"  # Litestream's local positions for the old file
    if meta.is_dir():
        shutil.rmtree(meta, ignore_errors=True)
