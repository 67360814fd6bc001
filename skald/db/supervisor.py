"""Supervisor: starts document actors on demand and reaps idle ones.

It owns a nursery (entered by :meth:`Supervisor.serve`) holding the service
database's actor, every document actor and the reaper. Callers use
:meth:`Supervisor.open_document`, an async context manager that yields a
started actor and holds it open for the duration of the block.

A document is reaped when it has been idle for ``idle_timeout`` *and*
nothing holds it: no open request, watcher, subscriber, stream waiter or
unexpired lease (see :meth:`DocumentActor.hold` and
:meth:`DocumentActor.keep_alive_until`).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import shutil
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import structlog
import trio

from skald.config import Settings
from skald.db.actor import DocumentActor
from skald.db.connection import DocConnection
from skald.db.ids import validate_db_id
from skald.db.worker import WorkerPool
from skald.errors import DocumentNotFound, DocumentUnavailable, ShuttingDown
from skald.metrics import Metrics

log = structlog.get_logger("skald.db.supervisor")

SERVICE_DB_ID = "_skald"

ActorHook = Callable[[DocumentActor], None]


class Placement(Protocol):
    """Where documents live when several nodes share them (:class:`skald.cluster.service.Cluster`)."""

    async def activate(self, actor: DocumentActor) -> None:
        """An actor started (before any op runs): replicate it, gate its acknowledgements."""

    async def registered(self, db_id: str) -> None:
        """A document was created on this node."""

    async def deleted(self, db_id: str) -> None:
        """A document was deleted on this node."""


class Supervisor:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._actors: dict[str, DocumentActor] = {}
        self._starting: dict[str, trio.Event] = {}
        self._known: set[str] = set()
        self._nursery: trio.Nursery | None = None
        self._service: DocumentActor | None = None
        self._closed = False
        self._actor_hooks: list[ActorHook] = []
        self._reaper_wakeup = trio.Event()
        # (deadline, n, actor): when each idle actor could be reaped, at most one entry per actor
        # (DocumentActor.reap_scheduled); an entry may be early (the actor was used since): the
        # reaper then looks again at that actor alone. No scan of every open actor per request.
        self._reap_queue: list[tuple[float, int, DocumentActor]] = []
        self._reap_order = itertools.count()
        self._writer_pool: WorkerPool | None = None
        self._reader_pool: WorkerPool | None = None
        self.placement: Placement | None = None
        """Set on a cluster node; ``None`` (the single-process default) changes nothing."""
        self.started_at = time.time()
        self.metrics.mailbox_capacity.set(settings.mailbox_size)

    # ---- lifecycle --------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the service database, load the registry and serve until :meth:`aclose`.

        Reports itself through ``task_status`` once the service database is ready.
        """
        self.settings.documents_dir.mkdir(parents=True, exist_ok=True)
        # Every document's connections share these threads (a thread per connection would mean
        # 20,000 threads for 10,000 open documents). Two pools: slow reads never hold the
        # threads writes need.
        self._writer_pool = WorkerPool(self.settings.db_writer_threads, name="skald-writer")
        self._reader_pool = WorkerPool(self.settings.db_reader_threads, name="skald-reader")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._service = self._new_actor(SERVICE_DB_ID, migrations="service")
                self._service.path = self.settings.service_db_path
                await nursery.start(self._service.serve)
                rows = await self._service.read(
                    lambda conn: [r[0] for r in conn.execute("SELECT db_id FROM documents")]
                )
                self._known = set(rows)
                self.metrics.documents.set(len(self._known))
                nursery.start_soon(self._reap_idle)
                task_status.started(self)
        finally:
            # every actor has stopped (the nursery is done) and closed its connections
            await self._writer_pool.aclose()
            await self._reader_pool.aclose()

    async def aclose(self) -> None:
        """Stop every actor after its queued work, then the service database; returns when all exited."""
        if self._closed:
            return
        self._closed = True
        actors = list(self._actors.values())
        for actor in actors:
            actor.stop("shutdown")
        for actor in actors:
            await actor.stopped.wait()
        if self._service is not None:
            self._service.stop("shutdown")
            await self._service.stopped.wait()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel(reason="supervisor stopped")

    @property
    def service(self) -> DocumentActor:
        """The service database's actor (tokens, registry, audit log, jobs)."""
        if self._service is None:
            raise ShuttingDown("supervisor is not running")
        return self._service

    def on_actor_start(self, hook: ActorHook) -> None:
        """Call ``hook(actor)`` for every document actor once it has started (e.g. to attach listeners)."""
        self._actor_hooks.append(hook)

    # ---- documents ----------------------------------------------------------------------------------

    def exists(self, db_id: str) -> bool:
        return db_id in self._known

    @property
    def known_documents(self) -> frozenset[str]:
        return frozenset(self._known)

    @property
    def open_actors(self) -> dict[str, DocumentActor]:
        return dict(self._actors)

    async def create_document(self, db_id: str) -> bool:
        """Register ``db_id`` and create its file; return False if it already existed."""
        validate_db_id(db_id)
        if db_id in self._known:
            return False
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

        def insert(conn: DocConnection) -> int:
            cur = conn.execute(
                "INSERT OR IGNORE INTO documents (db_id, created_at) VALUES (?, ?)", (db_id, now)
            )
            return cur.rowcount

        created = await self.service.write(insert)
        self._known.add(db_id)
        self.metrics.documents.set(len(self._known))
        if self.placement is not None:
            await self.placement.registered(db_id)
        await self._get(db_id)  # creates and migrates the file now, so errors surface here
        return bool(created)

    async def adopt(self, db_id: str) -> None:
        """Register a document that exists elsewhere in the cluster (this node just took it)."""
        validate_db_id(db_id)
        if db_id in self._known:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        await self.service.write(
            lambda conn: conn.execute(
                "INSERT OR IGNORE INTO documents (db_id, created_at) VALUES (?, ?)", (db_id, now)
            )
        )
        self._known.add(db_id)
        self.metrics.documents.set(len(self._known))

    async def delete_document(self, db_id: str) -> None:
        """Stop the actor (ending its holders), remove its files and its registry row."""
        validate_db_id(db_id)
        if db_id not in self._known:
            raise DocumentNotFound(f"document {db_id} does not exist")
        self._known.discard(db_id)
        actor = self._actors.get(db_id)
        if actor is not None:
            actor.stop("deleted")
            await actor.stopped.wait()
        path = self.settings.document_path(db_id)
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                (path.parent / (path.name + suffix)).unlink()
        extra = self.settings.documents_dir / db_id
        if extra.is_dir():
            shutil.rmtree(extra, ignore_errors=True)
        await self.service.write(lambda conn: conn.execute("DELETE FROM documents WHERE db_id = ?", (db_id,)))
        self.metrics.documents.set(len(self._known))
        if self.placement is not None:
            await self.placement.deleted(db_id)

    @contextlib.asynccontextmanager
    async def open_document(self, db_id: str, *, create: bool = False) -> AsyncIterator[DocumentActor]:
        """Yield the running actor of ``db_id``, held open for the block.

        ``create=True`` registers a missing document first; otherwise a missing one raises
        :class:`DocumentNotFound`. Invalid ids raise ``InvalidDocumentId``.
        """
        validate_db_id(db_id)
        if db_id not in self._known:
            if not create:
                raise DocumentNotFound(f"document {db_id} does not exist")
            await self.create_document(db_id)
        async with self._held(db_id) as actor:
            yield actor

    @contextlib.asynccontextmanager
    async def open_internal(self, db_id: str) -> AsyncIterator[DocumentActor]:
        """Like :meth:`open_document` for a document of skald's own (the cluster's ``_audit``).

        Its name is one no client can use (not a valid ``db_id``), and it has no registry row, so
        it is never listed, created or deleted through the API.
        """
        async with self._held(db_id) as actor:
            yield actor

    @contextlib.asynccontextmanager
    async def _held(self, db_id: str) -> AsyncIterator[DocumentActor]:
        for _attempt in range(3):
            actor = await self._get(db_id)
            try:
                hold = actor.hold()
                hold.__enter__()
            except DocumentUnavailable:
                await actor.stopped.wait()  # reaped between lookup and hold: start a new one
                continue
            try:
                yield actor
            finally:
                hold.__exit__(None, None, None)
            return
        raise DocumentUnavailable(f"document {db_id} keeps closing; retry")

    async def _get(self, db_id: str) -> DocumentActor:
        if self._closed or self._nursery is None:
            raise ShuttingDown("server is shutting down")
        while True:
            actor = self._actors.get(db_id)
            if actor is not None and not actor.closing.is_set():
                return actor
            if actor is not None:
                await actor.stopped.wait()
                continue
            pending = self._starting.get(db_id)
            if pending is not None:
                await pending.wait()
                continue
            break
        started = trio.Event()
        self._starting[db_id] = started
        try:
            actor = self._new_actor(db_id)
            await self._nursery.start(self._run_actor, actor)
            if self.placement is not None:
                try:
                    await self.placement.activate(actor)
                except BaseException:
                    actor.stop("failed")
                    raise
            for hook in self._actor_hooks:
                hook(actor)
            return actor
        finally:
            del self._starting[db_id]
            started.set()

    def _new_actor(self, db_id: str, migrations: str = "document") -> DocumentActor:
        s = self.settings
        actor = DocumentActor(
            db_id,
            s.document_path(db_id),
            migrations=migrations,
            mailbox_size=s.mailbox_size,
            max_batch=s.max_batch,
            read_pool_size=s.read_pool_size,
            synchronous=s.synchronous,
            busy_timeout_ms=s.busy_timeout_ms,
            cache_kib=s.sqlite_cache_kib,
            connection_idle_seconds=s.connection_idle_seconds,
            writer_pool=self._writer_pool,
            reader_pool=self._reader_pool,
            metrics=self.metrics,
        )
        actor.on_idle = lambda: self._schedule_reap(actor)
        return actor

    async def _run_actor(
        self, actor: DocumentActor, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._actors[actor.db_id] = actor
        try:
            await actor.serve(task_status=task_status)
        finally:
            if self._actors.get(actor.db_id) is actor:
                del self._actors[actor.db_id]

    # ---- reaping ------------------------------------------------------------------------------------

    async def _reap_idle(self) -> None:
        # Sleep until the earliest moment an idle actor could be reaped, or until an actor that
        # became idle could be reaped earlier than that. No periodic wake-ups while everything
        # is busy, and each wake-up looks only at the actors whose moment came.
        timeout = self.settings.idle_timeout
        while True:
            deadline = self._reap_queue[0][0] if self._reap_queue else math.inf
            with trio.move_on_at(deadline):
                await self._reaper_wakeup.wait()
            self._reaper_wakeup = trio.Event()
            now = trio.current_time()
            reaped = 0
            while self._reap_queue and self._reap_queue[0][0] <= now:
                _, _, actor = heapq.heappop(self._reap_queue)
                actor.reap_scheduled = False
                if actor.closing.is_set() or self._actors.get(actor.db_id) is not actor:
                    continue
                if actor.idle_for(now) >= timeout:
                    actor.stop("idle")
                    reaped += 1
                else:  # used since it was lined up: line it up again (if still idle)
                    self._schedule_reap(actor)
            if reaped:
                log.debug("reaped idle documents", count=reaped)

    def _schedule_reap(self, actor: DocumentActor) -> None:
        """``actor`` may have become idle: line it up for the reaper (once)."""
        if actor.reap_scheduled:
            return  # its entry is due no later than its new deadline: the reaper looks again then
        deadline = actor.reap_deadline(self.settings.idle_timeout)
        if deadline == math.inf:
            return  # held or busy: it calls on_idle again when it is not
        actor.reap_scheduled = True
        heapq.heappush(self._reap_queue, (deadline, next(self._reap_order), actor))
        if self._reap_queue[0][2] is actor:
            self._reaper_wakeup.set()  # earlier than what the reaper sleeps until

    def reap_idle_now(self, min_idle: float | None = None) -> list[str]:
        """Stop every actor idle for at least ``min_idle`` (default ``idle_timeout``); return their ids."""
        now = trio.current_time()
        threshold = self.settings.idle_timeout if min_idle is None else min_idle
        reaped = []
        for db_id, actor in list(self._actors.items()):
            if not actor.closing.is_set() and actor.idle_for(now) >= threshold:
                actor.stop("idle")
                reaped.append(db_id)
        if reaped:
            log.debug("reaped idle documents", count=len(reaped))
        return reaped

    def status(self) -> dict[str, Any]:
        return {
            "open_actors": len(self._actors),
            "documents": len(self._known),
            "mailboxes": {db_id: a.mailbox_depth for db_id, a in sorted(self._actors.items())},
        }
