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
import functools
import json
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from skald.auth.tokens import hash_token
from skald.cluster.audit import AuditCollector
from skald.cluster.etcd import EtcdClient, EtcdUnavailable
from skald.cluster.replication import Litestream, replica_url
from skald.cluster.rows import ROWS, TABLES, RowMirror, row_key, seconds_left
from skald.cluster.rows import read_row as read_shared_row
from skald.cluster.tokens import TOKENS, TokenMirror, read_row
from skald.config import Settings
from skald.db.actor import DocumentActor
from skald.db.connection import DocConnection
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
        self.released = Counter(
            "skald_cluster_documents_released_total",
            "Idle documents handed back because their requests arrive through another node", registry=registry,
        )
        self.imported = Counter(
            "skald_cluster_documents_imported_total", "Documents of the data folder from before the node joined",
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
        self.rows = RowMirror(lambda: supervisor.service)
        self.audit = AuditCollector(self)
        self.forwarder: Forwarder | None = None  # set by skald.cluster.routes.install
        # For each owned document, the node its latest request came through (this node's id when
        # HAProxy sent it here directly): an idle document is handed back to the node its requests
        # arrive at, which is where HAProxy's hash puts it now (a node rejoined or joined).
        self.arrivals: dict[str, str] = {}
        self.import_conflicts: list[str] = []
        self.started_at = time.time()

    # ---- lifecycle --------------------------------------------------------------------------------

    async def serve(self, url: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start Litestream, take the node lease and keep it alive until :meth:`leave`."""
        self.url = self.settings.cluster_advertise_url or url
        with self._cancel:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.litestream.serve)
                nursery.start_soon(self.tokens.serve)
                nursery.start_soon(self.rows.serve)
                await nursery.start(self._follow)
                await self._join()
                nursery.start_soon(self._keep_alive)
                nursery.start_soon(self._watchdog)
                await self._import_local()
                nursery.start_soon(self._rebalance)
                nursery.start_soon(self.audit.serve)
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
        await self.audit.aclose()

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
        if key.startswith(ROWS):
            self.rows.seen(kind, key, kv.value)
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
        self.arrivals.clear()
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

    def arrived(self, db_id: str, via: str | None) -> None:
        """A request for ``db_id`` is being served here; ``via`` names the node that forwarded it."""
        if db_id in self._claims:
            self.arrivals[db_id] = via or self.node_id

    async def _rebalance(self) -> None:
        """Hand back idle documents whose requests arrive through another live node (see :meth:`release`)."""
        while True:
            await trio.sleep(max(0.5, min(self.settings.idle_timeout, self.settings.cluster_lease_seconds)))
            open_now = self.supervisor.open_actors
            for db_id, via in list(self.arrivals.items()):
                if via != self.node_id and via in self.nodes and db_id not in open_now and db_id in self._claims:
                    try:
                        await self.release(db_id)
                    except (EtcdUnavailable, DocumentUnavailable) as exc:
                        log.warning("could not hand a document back", db_id=db_id, error=str(exc))

    async def release(self, db_id: str) -> bool:
        """Stop owning ``db_id`` (idle here): last sync to S3, then delete the owner key; True if released.

        The claim goes first, so from then on no commit of this node is acknowledged for ``db_id``
        (the commit gate refuses it): everything acknowledged before is in the generation that the
        sync below confirms in S3, which is what the next owner restores.
        """
        lock = self._locks.setdefault(db_id, trio.Lock())
        async with lock:
            claim = self._claims.get(db_id)
            path = self.settings.document_path(db_id)
            if claim is None or db_id in self.supervisor.open_actors or not await trio.Path(path).exists():
                return False
            del self._claims[db_id]
            self.arrivals.pop(db_id, None)
            self.metrics.owned.set(len(self._claims))
            actor = self.supervisor.open_actors.get(db_id)
            if actor is not None:  # opened by a request that passed owns() just before: it acknowledges nothing
                actor.stop("ownership changed")
                await actor.stopped.wait()
            try:
                if not claim.replicating:  # never opened while ours: S3 must still hold our generation
                    await self.litestream.register(path, replica_url(self.settings, db_id, claim.fence))
                    claim.replicating = True
                await self.litestream.sync(path, wait_seconds=10)
            except DocumentUnavailable:
                self._claims.setdefault(db_id, claim)  # not confirmed in S3: keep it and serve it here
                self.metrics.owned.set(len(self._claims))
                raise
            with contextlib.suppress(DocumentUnavailable):
                await self.litestream.unregister(path)
            await self.etcd.delete_if_owned(OWNERS + db_id, revision=claim.fence)
            self.metrics.released.inc()
            log.info("document handed back to the node its requests arrive at", db_id=db_id)
            return True

    async def _import_local(self) -> None:
        """Bring the data folder's documents from before this node joined into the cluster.

        A registered document without a ``.generation`` file was never in a cluster: the node takes
        it (its owner key), replicates the file as is under that fence's prefix, waits until S3 has
        it, and only then puts its registry key, so no other node can take it before its data is
        restorable. A name the cluster already has is left alone on disk and listed in ``/status``
        (``import_conflicts``): rename one of them.
        """
        joined = self.litestream.work_dir / "joined"  # written once this data folder has been in a cluster
        if not await trio.Path(joined).exists():
            await self._publish_local_identity()
            await trio.Path(joined).write_text(self.node_id)
        for db_id in sorted(self.supervisor.known_documents):
            path = self.settings.document_path(db_id)
            if path.with_name(path.name + ".generation").exists() or not path.exists():
                continue
            try:
                imported = await self._import(db_id)
            except (EtcdUnavailable, DocumentUnavailable) as exc:
                log.warning("could not import a document; it is tried again at the next start", db_id=db_id,
                            error=str(exc))
                continue
            if not imported:
                self.import_conflicts.append(db_id)
                log.warning("not imported: the cluster already has a document of that name", db_id=db_id)

    async def _publish_local_identity(self) -> None:
        """First join of a data folder: its tokens, users and live sessions become the cluster's.

        Only once (the ``joined`` file): a node that returns later must not bring back a row that
        was deleted cluster-wide while it was away. A row the cluster already has is left as it is.
        """
        present = {kv.key for kv in await self.etcd.get_prefix("/skald/", keys_only=True)}

        # Not the SKALD_ADMIN_TOKEN row: every node registers it itself (same hash, its own id).
        admin_hash = hash_token(self.settings.admin_token) if self.settings.admin_token else ""

        def local_keys(conn: DocConnection) -> tuple[list[str], dict[str, list[str]]]:
            tokens = [r[0] for r in conn.execute("SELECT id FROM tokens WHERE token_hash != ?", (admin_hash,))]
            rows = {table: [r[0] for r in conn.execute(f"SELECT {pk} FROM {table}")]
                    for table, (pk, _columns) in TABLES.items() if table != "login_flows"}
            return tokens, rows

        tokens, rows = await self.supervisor.service.read(local_keys)
        shared = 0
        for token_id in tokens:
            if TOKENS + token_id not in present:
                await self.share_token(token_id)
                shared += 1
        for table in ("users", "sessions"):  # users first: a session names its user
            for key in rows[table]:
                row = await self.supervisor.service.read(functools.partial(read_shared_row, table=table, key=key))
                left = seconds_left(row) if row else None
                if row_key(table, key) not in present and (left is None or left > 0):
                    await self.share_row(table, key)
                    shared += 1
        if shared:
            log.info("shared the data folder's tokens, users and sessions with the cluster", rows=shared)

    async def _import(self, db_id: str) -> bool:
        path = self.settings.document_path(db_id)
        if db_id in self.documents:
            return False
        owner = json.dumps({"node": self.node_id, "url": self.url})
        result = await self.etcd.create(OWNERS + db_id, owner, lease=self._lease)
        if not result.created or result.current is None:
            return False
        fence = result.current.create_revision
        if await self.etcd.get(DOCS + db_id) is not None:
            await self.etcd.delete_if_owned(OWNERS + db_id, revision=fence)
            return False
        await self.litestream.register(path, replica_url(self.settings, db_id, fence))
        claim = Claim(db_id, fence, replicating=True)
        try:
            await self.litestream.sync(path, wait_seconds=30)
            if not (await self.etcd.create(DOCS + db_id, json.dumps({"generation": fence}))).created:
                raise NotOwner(f"{db_id} was created elsewhere while it was imported")
        except BaseException:
            with trio.CancelScope(shield=True), contextlib.suppress(DocumentUnavailable):
                await self.litestream.unregister(path)
                await self.etcd.delete_if_owned(OWNERS + db_id, revision=fence)
            raise
        path.with_name(path.name + ".generation").write_text(str(fence))
        self._claims[db_id] = claim
        self.metrics.owned.set(len(self._claims))
        self.metrics.imported.inc()
        log.info("imported a document from before the node joined", db_id=db_id, generation=fence)
        return True

    async def place(self, db_id: str, *, creating: bool = False, take: bool = True) -> str | None:
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
            if not take:  # a forwarded request: the sender thinks we own it; we do not take it on its word
                raise NotOwner(f"document {db_id} moved while this request was forwarded; retry", retry_after=1)
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
        replicating = False
        if registry is not None and await trio.Path(path).exists():
            # The generation this node serves goes to S3 under its own prefix *before* the registry
            # names that prefix: if the registry moved first and this node died before Litestream's
            # first upload, the next owner would restore an empty generation.
            with contextlib.suppress(DocumentUnavailable):
                await self.litestream.unregister(path)
            await self.litestream.register(path, replica_url(self.settings, db_id, fence))
            await self.litestream.sync(path)
            replicating = True
        if registry is not None:
            ok = await self.etcd.put_if_owned(
                DOCS + db_id, json.dumps({"generation": fence}), owner_key=OWNERS + db_id, owner_revision=fence
            )
            if not ok:
                raise NotOwner(f"lost document {db_id} while taking it; retry", retry_after=1)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(fence))
            if not db_id.startswith("_"):  # skald's own documents (``_audit``) have no registry row
                await self.supervisor.adopt(db_id)
        self._claims[db_id] = Claim(db_id, fence, replicating=replicating)
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
        self.arrivals.pop(db_id, None)
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

    async def share_row(self, table: str, key: str) -> None:
        """Publish the local row ``key`` of ``table`` (users, sessions, login_flows), or its deletion."""
        row = await self.supervisor.service.read(lambda conn: read_shared_row(conn, table, key))
        if row is None:
            await self.etcd.delete(row_key(table, key))
            return
        left = seconds_left(row)
        lease = 0
        if left is not None:  # etcd forgets it once it has expired (a minute later: clocks differ)
            lease = await self.etcd.grant(max(1.0, left) + 60)
        await self.etcd.put(row_key(table, key), json.dumps(row), lease=lease)

    async def unshare_row(self, table: str, key: str) -> None:
        """Remove a shared row from every node (a logout): the watch deletes each node's copy."""
        await self.etcd.delete(row_key(table, key))

    async def take_row(self, table: str, key: str) -> dict[str, Any] | None:
        """Remove a shared row cluster-wide and return it; only one caller of many gets it."""
        kv = await self.etcd.take(row_key(table, key))
        row: dict[str, Any] | None = json.loads(kv.value) if kv is not None else None
        return row

    # ---- reads ---------------------------------------------------------------------------------------

    def list_documents(self) -> list[str]:
        """Every document of the cluster (the registry in etcd, as the watch last saw it)."""
        return sorted(d for d in self.documents if not d.startswith("_"))  # not skald's own (``_audit``)

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
            "documents_released": int(self.metrics.released._value.get()),
            "import_conflicts": list(self.import_conflicts),
            "replication": dict(sorted(replicating.items())),
        }


def _remove_document_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal", ".generation"):
        with contextlib.suppress(FileNotFoundError):
            (path.parent / (path.name + suffix)).unlink()
    meta = path.parent / f".{path.name}-litestream"  # Litestream's local positions for the old file
    if meta.is_dir():
        shutil.rmtree(meta, ignore_errors=True)
