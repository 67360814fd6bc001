"""Reactive query watches: re-run a read-only query when a commit touches what it reads.

A :class:`QueryWatch` holds its document open for as long as its event
stream is consumed. After each evaluation it knows the tables the query read
(recorded by the connection's authorizer, ``conn.track_reads()``); a commit
listener marks the watch dirty only when the commit's written tables
intersect that read set. The listener does a set intersection and sets a
``trio.Event``: it never blocks the write path.

Coalescing: one evaluation runs at a time; commits arriving meanwhile only
set the dirty flag again, so a burst of commits causes at most one extra
re-run. ``update`` is sent only when ``result_hash`` changed.

Events (see docs/query.md): ``snapshot``, ``unchanged``, ``update``,
``heartbeat``, ``error``. A failing re-run sends ``error`` and keeps the
watch open; the next successful run is sent as ``update``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import trio

from skald.db.actor import CommitInfo, DocumentActor
from skald.db.sqlscope import StatementClass
from skald.db.supervisor import Supervisor
from skald.errors import SkaldError
from skald.http.sse import encode_event, json_event, wait_first
from skald.query.metrics import QueryMetrics
from skald.query.service import Limits, Statement, StatementResult, execute
from skald.server.shutdown import final_event

_SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_schema"})


@dataclasses.dataclass
class _SharedRun:
    actor: DocumentActor
    commits: int
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    result: StatementResult | None = None
    error: SkaldError | None = None


class WatchHub:
    """Shares evaluations between watches of the same query on the same document.

    A dashboard opened by 100 people watches one query 100 times; after a commit
    they all need the same result. A run is reused when no commit happened since it
    started (``actor.commits`` unchanged): it saw at least that state. One entry per
    distinct query, dropped when its last watch ends.
    """

    def __init__(self) -> None:
        self._runs: dict[tuple[Any, ...], _SharedRun] = {}
        self._users: dict[tuple[Any, ...], int] = {}

    def acquire(self, key: tuple[Any, ...]) -> None:
        self._users[key] = self._users.get(key, 0) + 1

    def release(self, key: tuple[Any, ...]) -> None:
        self._users[key] -= 1
        if not self._users[key]:
            del self._users[key]
            self._runs.pop(key, None)

    async def evaluate(
        self, key: tuple[Any, ...], actor: DocumentActor, stmt: Statement, limits: Limits
    ) -> StatementResult:
        """The query's result as of at least the actor's latest commit; raises its SkaldError."""
        while True:
            run = self._runs.get(key)
            if run is not None and run.actor is actor and run.commits == actor.commits:
                await run.done.wait()
                if run.result is not None:
                    return run.result
                if run.error is not None:
                    raise run.error
                continue  # its owner was cancelled: run it ourselves
            run = _SharedRun(actor, actor.commits)
            self._runs[key] = run
            try:
                run.result = await execute(actor, stmt, StatementClass.READ, limits)
            except SkaldError as exc:
                run.error = exc
                raise
            finally:
                if run.result is None and run.error is None and self._runs.get(key) is run:
                    del self._runs[key]
                run.done.set()
            return run.result


class QueryWatch:
    """One live query. Iterate :meth:`events` to drive it; leaving the iteration releases it."""

    def __init__(
        self,
        supervisor: Supervisor,
        db_id: str,
        stmt: Statement,
        limits: Limits,
        *,
        heartbeat_seconds: float,
        known_hash: str | None = None,
        shutdown: trio.Event | None = None,
        hub: WatchHub | None = None,
        metrics: QueryMetrics | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.db_id = db_id
        self.stmt = stmt
        self.limits = limits
        self.heartbeat_seconds = heartbeat_seconds
        self.known_hash = known_hash
        self.shutdown = shutdown if shutdown is not None else trio.Event()
        self.read_tables: frozenset[str] | None = None  # None until the first run: any commit counts
        self.dirty = trio.Event()
        self.evaluations = 0
        self.hub = hub if hub is not None else WatchHub()
        self.key = (db_id, stmt.sql, repr(stmt.params), limits)
        self.metrics = metrics

    def _on_commit(self, info: CommitInfo) -> None:
        if (
            self.read_tables is None
            or not self.read_tables.isdisjoint(info.tables)
            or not _SCHEMA_TABLES.isdisjoint(info.tables)  # DDL may change any result (or break it)
        ):
            self.dirty.set()

    async def _evaluate(self, actor: DocumentActor) -> tuple[StatementResult | None, SkaldError | None]:
        self.dirty = trio.Event()  # commits from now on are seen by the next run
        self.evaluations += 1
        if self.metrics is not None:
            self.metrics.watch_runs.inc()
        try:
            result = await self.hub.evaluate(self.key, actor, self.stmt, self.limits)
        except SkaldError as exc:
            return None, exc
        self.read_tables = result.read_tables
        return result, None

    async def events(self) -> AsyncIterator[bytes]:
        """Encoded SSE events until the client leaves, the document closes or the server stops.

        On cancellation or ``aclose()`` the commit listener is removed and the
        document's hold released.
        """
        async with self.supervisor.open_document(self.db_id) as actor:
            remove = actor.add_commit_listener(self._on_commit)
            self.hub.acquire(self.key)
            if self.metrics is not None:
                self.metrics.watches.inc()
            try:
                result, error = await self._evaluate(actor)
                last_hash: str | None = None
                if error is not None:
                    yield json_event("error", error.problem())
                else:
                    assert result is not None
                    last_hash = result.hash
                    if last_hash == self.known_hash:
                        yield json_event("unchanged", {"result_hash": last_hash}, last_hash)
                    else:
                        yield _result_event("snapshot", result)
                while True:
                    wake = self.dirty
                    with trio.move_on_after(self.heartbeat_seconds):
                        await wait_first(wake, actor.closing, self.shutdown)
                    if self.shutdown.is_set():
                        yield final_event(**({"resume_from": last_hash} if last_hash else {}))
                        return
                    if actor.closing.is_set():
                        return
                    if not wake.is_set():
                        yield json_event("heartbeat", {"time": round(time.time(), 3)})
                        continue
                    result, error = await self._evaluate(actor)
                    if error is not None:
                        last_hash = None
                        yield json_event("error", error.problem())
                        continue
                    assert result is not None
                    new_hash = result.hash
                    if new_hash != last_hash:
                        last_hash = new_hash
                        yield _result_event("update", result)
            finally:
                remove()
                self.hub.release(self.key)
                if self.metrics is not None:
                    self.metrics.watches.dec()


def _result_event(event: str, result: StatementResult) -> bytes:
    """An encoded ``snapshot``/``update`` event (the JSON is encoded once per shared result)."""
    return encode_event(event, result.event_json, result.hash)
