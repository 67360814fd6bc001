"""JobService: the job queues of every document (``state.jobs``).

Each call names a ``db_id``; the service opens the document through the
supervisor and runs one actor write op (group commit), so an enqueue is
acknowledged only once it is on disk and two fetches never claim one job.

Waiting (long-poll fetch, the events stream) is woken by the actor's commit
listener when a commit wrote a job state change (``_skald_job_events``) or queue
settings, and by the jobs clock reaching the next due time the fetch op reported
(a ``run_at``, a backoff, a lease expiring): never by a polling loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

import structlog
import trio
from prometheus_client import Counter, Gauge, Histogram

from skald.db.actor import CommitInfo, DocumentActor, QueuedWrite
from skald.db.connection import DocConnection
from skald.db.supervisor import Supervisor
from skald.errors import SkaldError
from skald.http.sse import json_event, wait_first
from skald.jobs import ops
from skald.jobs import search as job_search
from skald.jobs.clock import JobClock, SystemJobClock
from skald.jobs.model import MAX_BATCH, Job, JobSpec, iso
from skald.metrics import Metrics
from skald.server.shutdown import final_event

T = TypeVar("T")
_Done = tuple[T, ops.Tx, dict[str, dict[str, int]] | None]
log = structlog.get_logger("skald.jobs")

WAKE_TABLES = frozenset({"_skald_job_events", "_skald_job_queues"})
EVENTS_PAGE = 500
EVENTS_KEPT = 100_000
"""Job events kept per document; older ones are pruned (a stream resuming before them gets ``reset``)."""
PRUNE_EVERY = 1000
WORKER_TOUCH_SECONDS = 1.0


class _Signal:
    """Wakes waiters after commits that changed a job's state or a queue's settings.

    ``changed`` is set (and replaced) after every such commit: the events streams wait on it.
    Waiting fetches queue up in ``waiters`` and are woken only as many as the commit made jobs
    ready (or freed running slots): waking all of them for every enqueue would have each run
    an empty fetch op (a thundering herd on the document's writer). ``pending`` is what this
    service's ops in the commit reported (None: something else wrote, wake everyone).
    """

    def __init__(self) -> None:
        self.changed = trio.Event()
        self.waiters: list[trio.Event] = []
        self._reported = False  # did an op of this service report on the commit being made?
        self._wake_all = False
        self._ready = 0

    def report(self, ready: int | None) -> None:
        """An op of the coming commit made ``ready`` jobs fetchable (None: wake every waiter)."""
        self._reported = True
        if ready is None:
            self._wake_all = True
        else:
            self._ready += ready

    def on_commit(self, info: CommitInfo) -> None:
        reported, wake_all, ready = self._reported, self._wake_all, self._ready
        self._reported, self._wake_all, self._ready = False, False, 0
        if not info.tables & WAKE_TABLES:
            return
        self.changed.set()
        self.changed = trio.Event()
        self.wake(len(self.waiters) if wake_all or not reported else ready)

    def wake(self, count: int) -> None:
        woken, self.waiters = self.waiters[:count], self.waiters[count:]
        for event in woken:
            event.set()


class Pending(Generic[T]):
    """A job op queued in a document's mailbox: its value once committed, for any number of awaiters
    (the enqueue stream's lines that share an op each await it; the actor's result unwraps once)."""

    def __init__(self, queued: QueuedWrite[_Done[T]]) -> None:
        self._queued = queued
        self._settled = trio.Event()
        self._taking = False
        self._value: T | None = None
        self._error: Exception | None = None

    @property
    def done(self) -> bool:
        return self._queued.done

    async def result(self) -> T:
        while not self._settled.is_set():
            if self._taking:  # another awaiter is unwrapping it
                await self._settled.wait()
                continue
            self._taking = True
            try:
                self._value = (await self._queued.result())[0]
                self._settled.set()
            except Exception as exc:  # the op's error, for every awaiter
                self._error = exc
                self._settled.set()
            finally:  # cancelled before unwrapping: the next awaiter unwraps it
                self._taking = False
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set when no error was


class _Shared:
    """Enqueue-stream lines that share one write op: those read while it waited in the mailbox."""

    def __init__(self, spec: JobSpec) -> None:
        self.specs = [spec]
        self.taken = False  # the op has started: later lines need an op of their own
        self.lock = threading.Lock()  # the op starts in the document's worker thread
        self.pending: Pending[list[tuple[Job, bool]]] | None = None


class EnqueueStream:
    """Queues each line's enqueue in line order. A line read while the previous line's op still waits
    in the mailbox joins that op (one ``enqueue_many``: a handful of statements for all of them) instead
    of adding an op of its own; a document that commits slower than lines arrive then does fewer, larger
    writes, as a batch request would. Lines sharing an op commit together (all or none)."""

    def __init__(self, service: JobService, actor: DocumentActor) -> None:
        self._service = service
        self._actor = actor
        self._open: _Shared | None = None

    async def add(self, spec: JobSpec) -> EnqueuedLine:
        shared = self._open
        if shared is not None:
            with shared.lock:
                if not shared.taken and len(shared.specs) < MAX_BATCH:
                    shared.specs.append(spec)
                    return EnqueuedLine(shared, len(shared.specs) - 1)
        shared = _Shared(spec)

        def run(tx: ops.Tx, shared: _Shared = shared) -> list[tuple[Job, bool]]:
            with shared.lock:
                shared.taken = True
                specs = list(shared.specs)
            return ops.enqueue_many(tx, specs)

        shared.pending = await self._service._queue_write(self._actor, run)
        self._open = shared  # only once queued: a line never joins an op that failed to queue
        return EnqueuedLine(shared, 0)


class EnqueuedLine:
    def __init__(self, shared: _Shared, index: int) -> None:
        self._shared = shared
        self._index = index

    @property
    def done(self) -> bool:
        return self._shared.pending is not None and self._shared.pending.done

    async def result(self) -> tuple[Job, bool]:
        assert self._shared.pending is not None  # set before add() returned the first line
        return (await self._shared.pending.result())[self._index]


@dataclasses.dataclass(frozen=True)
class Fetched:
    job: Job
    lease: str


class JobService:
    def __init__(
        self, supervisor: Supervisor, metrics: Metrics, clock: JobClock | None = None,
        shutdown: trio.Event | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.shutdown = shutdown if shutdown is not None else trio.Event()
        """Set when the server stops: waiting fetches answer 204 at once instead of holding the grace period."""
        self.clock: JobClock = clock or SystemJobClock()
        self._signals: dict[int, tuple[DocumentActor, _Signal]] = {}
        self._counts: dict[str, dict[tuple[str, str], int]] = {}
        self._event_writes: dict[str, int] = {}
        self._seen: dict[tuple[str, str], float] = {}
        r = metrics.registry
        self.jobs_gauge = Gauge("skald_queue_jobs", "Jobs by document, queue and state", ["db", "queue", "state"],
                                registry=r)
        self.enqueued = Counter("skald_queue_enqueued_total", "Jobs enqueued", ["queue"], registry=r)
        self.finished = Counter("skald_queue_finished_total",
                                "Attempts that ended, by outcome (completed, failed, dead)",
                                ["queue", "outcome"], registry=r)
        self.wait_seconds = Histogram(
            "skald_queue_wait_seconds", "Enqueue (or run_at) to start of an attempt",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600), registry=r)
        self.run_seconds = Histogram(
            "skald_queue_run_seconds", "Start of an attempt to its ack or failure",
            buckets=(0.001, 0.01, 0.1, 1, 10, 60, 600, 3600), registry=r)

    # ---- plumbing ---------------------------------------------------------------------------------

    def _touch_worker(self, db_id: str, worker_id: str) -> bool:
        """Whether this fetch should record the worker as seen: at most once a second per worker
        (``GET …/workers`` has a window of seconds; a write per fetch would be wasted work)."""
        now = trio.current_time()
        key = (db_id, worker_id)
        if now - self._seen.get(key, -math.inf) < WORKER_TOUCH_SECONDS:
            return False
        if len(self._seen) > 10_000:
            self._seen.clear()  # bounded: forgetting only costs one extra write per worker
        self._seen[key] = now
        return True

    def _signal(self, actor: DocumentActor) -> _Signal:
        entry = self._signals.get(id(actor))
        if entry is not None and entry[0] is actor:
            return entry[1]
        for key, (old, _) in list(self._signals.items()):
            if old.stopped.is_set():  # the actor is gone; so is its listener
                del self._signals[key]
        signal = _Signal()
        actor.add_commit_listener(signal.on_commit)
        self._signals[id(actor)] = (actor, signal)
        return signal

    def _op(
        self, actor: DocumentActor, fn: Callable[[ops.Tx], T]
    ) -> tuple[Callable[[DocConnection], _Done[T]], Callable[[_Done[T]], None]]:
        """``fn`` as one actor write op with a fresh :class:`ops.Tx`, and what runs after its commit
        (metrics, waking the fetches it made jobs ready for)."""
        db_id = actor.db_id
        signal = self._signal(actor)

        def op(conn: DocConnection) -> _Done[T]:
            tx = ops.Tx(conn, self.clock.now_ms())
            value = fn(tx)
            # Counted once per document (then kept by transitions), decided when the op runs: a stream
            # queues many ops before the first commit, and each must not scan the jobs table again.
            first = db_id not in self._counts
            counts = ops.queue_counts(tx) if (tx.recount or first) else None
            if tx.transitions or tx.recount:
                written = self._event_writes.get(db_id, 0) + 1
                if written % PRUNE_EVERY == 0:
                    conn.execute("DELETE FROM _skald_job_events WHERE id <= (SELECT max(id) FROM _skald_job_events)"
                                 " - ?", (EVENTS_KEPT,))
            return value, tx, counts

        def committed(result: _Done[T]) -> None:
            _, tx, counts = result
            self._record(db_id, tx, counts)
            signal.report(None if tx.recount or tx.wake_all else sum(
                1 for _, old, new in tx.transitions if new in ("queued", "retrying") or old == "running"))

        return op, committed

    async def _write(self, actor: DocumentActor, fn: Callable[[ops.Tx], T]) -> T:
        """Run ``fn`` as one write op (group commit); its value once committed."""
        op, committed = self._op(actor, fn)
        value, _tx, _counts = await actor.write(op, after_commit=committed)
        return value

    async def _queue_write(self, actor: DocumentActor, fn: Callable[[ops.Tx], T]) -> Pending[T]:
        """Queue ``fn`` as one write op in the actor's mailbox (waiting for room: a stream's backpressure).
        Ops queued in turn commit in that order."""
        op, committed = self._op(actor, fn)
        return Pending(await actor.enqueue_write(op, after_commit=committed))

    def _record(self, db_id: str, tx: ops.Tx, counts: dict[str, dict[str, int]] | None) -> None:
        if tx.transitions or tx.recount:
            self._event_writes[db_id] = self._event_writes.get(db_id, 0) + 1
        known = self._counts.setdefault(db_id, {})
        if counts is not None:
            for key in known:
                known[key] = 0
            for queue, states in counts.items():
                for state, n in states.items():
                    known[(queue, state)] = n
        else:
            for queue, old, new in tx.transitions:
                if old is not None:
                    known[(queue, old)] = known.get((queue, old), 0) - 1
                if new is not None:
                    known[(queue, new)] = known.get((queue, new), 0) + 1
        changed = {(q, s) for q, o, n in tx.transitions for s in (o, n) if s is not None}
        for key in known if counts is not None else changed:
            self.jobs_gauge.labels(db_id, key[0], key[1]).set(known.get(key, 0))
        for queue, old, new in tx.transitions:
            if old is None and new == "queued":
                self.enqueued.labels(queue).inc()
        for wait in tx.started:
            self.wait_seconds.observe(wait)
        for queue, outcome, run in tx.finished:
            self.finished.labels(queue, outcome).inc()
            if outcome != "dead":
                self.run_seconds.observe(run)

    @contextlib.asynccontextmanager
    async def _document(self, db_id: str) -> AsyncIterator[DocumentActor]:
        async with self.supervisor.open_document(db_id) as actor:
            yield actor

    async def _run(self, db_id: str, fn: Callable[[ops.Tx], T]) -> T:
        async with self._document(db_id) as actor:
            return await self._write(actor, fn)

    # ---- producers --------------------------------------------------------------------------------

    async def enqueue(self, db_id: str, spec: JobSpec) -> tuple[Job, bool]:
        return await self._run(db_id, lambda tx: ops.enqueue(tx, spec))

    async def enqueue_batch(self, db_id: str, specs: list[JobSpec]) -> list[tuple[Job, bool]]:
        return await self._run(db_id, lambda tx: ops.enqueue_many(tx, specs))

    @contextlib.asynccontextmanager
    async def enqueue_stream(self, db_id: str) -> AsyncIterator[EnqueueStream]:
        """The enqueue stream's producer side (``POST …/jobs/stream``), the document held open while it lasts."""
        async with self._document(db_id) as actor:
            yield EnqueueStream(self, actor)

    @contextlib.asynccontextmanager
    async def held(self, db_id: str) -> AsyncIterator[None]:
        """``db_id`` held open while a worker stream (``POST …/jobs/work``) lasts."""
        async with self._document(db_id):
            yield

    # ---- workers ----------------------------------------------------------------------------------

    async def fetch(
        self, db_id: str, queues: list[str], worker_id: str, lease_seconds: float, wait_seconds: float,
        max_jobs: int = 1,
    ) -> list[Fetched]:
        """Claim the next ready jobs (up to ``max_jobs``), waiting up to ``wait_seconds`` for one; [] if none came.

        Cancelling the caller while it waits claims nothing; once the claim's op is queued it
        commits (the lease then expires unused and the job returns to its queue as a failed attempt).
        """
        _, fetched = await self.ack_and_fetch(db_id, [], queues, worker_id, lease_seconds, wait_seconds, max_jobs)
        return fetched

    async def ack_and_fetch(
        self, db_id: str, acks: list[tuple[int, str, str | None]], queues: list[str], worker_id: str,
        lease_seconds: float, wait_seconds: float, max_jobs: int,
    ) -> tuple[list[dict[str, Any]], list[Fetched]]:
        """Ack ``acks`` and claim up to ``max_jobs`` (0: only ack) in one commit, then wait for jobs as
        :meth:`fetch` does: the worker stream's step (``POST …/jobs/work``), one op where a worker
        would otherwise make two requests and two commits. The acks' answers are :meth:`ack_many`'s."""
        deadline = trio.current_time() + wait_seconds
        answers: list[dict[str, Any]] | None = None
        async with self._document(db_id) as actor:
            signal = self._signal(actor)
            while True:
                woken = trio.Event()
                if max_jobs:
                    signal.waiters.append(woken)  # before the op: a commit after it still wakes us
                touch = self._touch_worker(db_id, worker_id)
                pending = acks if answers is None else []

                def claim(
                    tx: ops.Tx, touch: bool = touch, pending: list[tuple[int, str, str | None]] = pending
                ) -> tuple[list[Job | SkaldError], list[ops.Claimed] | int | None]:
                    done = ops.ack_many(tx, pending) if pending else []
                    if not max_jobs:
                        return done, []
                    return done, ops.fetch(tx, queues, worker_id, lease_seconds, max_jobs, touch_worker=touch)

                try:
                    done, outcome = await self._write(actor, claim)
                    if answers is None:
                        answers = _ack_answers(acks, done)
                    if isinstance(outcome, list):
                        return answers, [Fetched(claimed.job, claimed.lease) for claimed in outcome]
                    if trio.current_time() >= deadline:
                        return answers, []
                    with trio.move_on_at(deadline):
                        async with trio.open_nursery() as nursery:
                            if outcome is not None:
                                nursery.start_soon(self._sleep_then_cancel, outcome, nursery.cancel_scope)
                            nursery.start_soon(self._wait_then_cancel, woken, actor.closing, self.shutdown,
                                               nursery.cancel_scope)
                    if actor.closing.is_set() or self.shutdown.is_set():
                        return answers, []
                finally:
                    if woken in signal.waiters:
                        signal.waiters.remove(woken)
                    elif woken.is_set() and not (actor.closing.is_set() or self.shutdown.is_set()):
                        # A wake-up meant for a job this fetch did not take (it claimed another, or is
                        # leaving): hand it to the next waiter so no ready job waits for a timeout.
                        signal.wake(1)

    async def _sleep_then_cancel(self, ms: int, scope: trio.CancelScope) -> None:
        await self.clock.sleep_until(ms)
        scope.cancel(reason="a job became due")

    @staticmethod
    async def _wait_then_cancel(
        changed: trio.Event, closing: trio.Event, shutdown: trio.Event, scope: trio.CancelScope
    ) -> None:
        await wait_first(changed, closing, shutdown)
        scope.cancel(reason="jobs changed")

    async def heartbeat(
        self, db_id: str, worker_id: str, beats: list[ops.Beat], lease_seconds: float
    ) -> list[dict[str, Any]]:
        return await self._run(db_id, lambda tx: ops.heartbeat(tx, worker_id, beats, lease_seconds))

    async def ack(self, db_id: str, job_id: int, lease: str, result: str | None) -> Job:
        return await self._run(db_id, lambda tx: ops.ack(tx, job_id, lease, result))

    async def ack_many(self, db_id: str, acks: list[tuple[int, str, str | None]]) -> list[dict[str, Any]]:
        """Each ack's answer: ``{"id", "ok": true, "state"}`` or ``{"id", "ok": false, "code", "detail"}``."""
        return _ack_answers(acks, await self._run(db_id, lambda tx: ops.ack_many(tx, acks)))

    async def fail(
        self, db_id: str, job_id: int, lease: str, error: str, backtrace: str | None, checkpoint: str | None
    ) -> Job:
        return await self._run(db_id, lambda tx: ops.fail(tx, job_id, lease, error, backtrace, checkpoint))

    # ---- operators --------------------------------------------------------------------------------

    async def get(self, db_id: str, job_id: int) -> dict[str, Any]:
        """The job with every attempt's error (expired leases are reclaimed first, so the state is current)."""

        def op(tx: ops.Tx) -> dict[str, Any]:
            ops.reclaim_expired(tx)
            return {**ops.get_job(tx, job_id).to_json(), "errors": ops.job_errors(tx, job_id)}

        return await self._run(db_id, op)

    async def retry(self, db_id: str, job_id: int) -> Job:
        return await self._run(db_id, lambda tx: ops.retry(tx, job_id))

    async def cancel(self, db_id: str, job_id: int) -> Job:
        return await self._run(db_id, lambda tx: ops.cancel(tx, job_id))

    async def move(self, db_id: str, job_id: int, queue: str) -> Job:
        return await self._run(db_id, lambda tx: ops.move(tx, job_id, queue))

    async def delete(self, db_id: str, job_id: int) -> None:
        await self._run(db_id, lambda tx: ops.delete(tx, job_id))

    async def queues(self, db_id: str) -> list[dict[str, Any]]:
        return await self._run(db_id, ops.list_queues)

    async def configure_queue(self, db_id: str, name: str, fields: dict[str, Any]) -> dict[str, Any]:
        return await self._run(db_id, lambda tx: ops.configure_queue(tx, name, fields))

    async def remove_jobs(self, db_id: str, name: str, states: tuple[str, ...]) -> int:
        return await self._run(db_id, lambda tx: ops.remove_jobs(tx, name, states))

    async def delete_queue(self, db_id: str, name: str) -> int:
        return await self._run(db_id, lambda tx: ops.delete_queue(tx, name))

    async def search(self, db_id: str, where: job_search.Where, page: job_search.Page) -> dict[str, Any]:
        def op(tx: ops.Tx) -> dict[str, Any]:
            ops.reclaim_expired(tx)
            return job_search.search(tx, where, page)

        return await self._run(db_id, op)

    async def bulk(
        self, db_id: str, action: str, where: job_search.Where, queue: str | None, priority: int | None
    ) -> int:
        return await self._run(db_id, lambda tx: job_search.bulk(tx, action, where, queue, priority))

    async def workers(self, db_id: str, window_seconds: float) -> list[dict[str, Any]]:
        return await self._run(db_id, lambda tx: ops.workers(tx, int(window_seconds * 1000)))

    # ---- the events stream ------------------------------------------------------------------------

    async def events(
        self, db_id: str, since: int | None, heartbeat: float, shutdown: trio.Event
    ) -> AsyncIterator[bytes]:
        """SSE frames: ``job`` (id = event id) for every state change after ``since`` (None: from now on),
        ``heartbeat`` when idle, ``reset`` when ``since`` is older than what is kept, ``shutdown`` at the end.
        """
        async with self._document(db_id) as actor:
            signal = self._signal(actor)

            def bounds(conn: DocConnection) -> tuple[int, int]:
                row = conn.execute("SELECT coalesce(min(id), 0), coalesce(max(id), 0) FROM _skald_job_events"
                                   ).fetchone()
                pruned = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = '_skald_job_events'"
                                      ).fetchone()
                return int(row[0]), int(row[1]) if row[1] else int(pruned[0]) if pruned else 0

            oldest, newest = await actor.read(bounds)
            last = newest if since is None else since
            if since is not None and oldest and since < oldest - 1:
                yield json_event("reset", {"requested_since_id": since, "resume_from": oldest - 1,
                                           "detail": "job events after the requested cursor were pruned"},
                                 event_id=oldest - 1)
                last = oldest - 1
            yield json_event("heartbeat", {"live": True})
            while not (shutdown.is_set() or actor.closing.is_set()):
                changed = signal.changed
                after = last

                def page(conn: DocConnection, after: int = after) -> list[tuple[Any, ...]]:
                    return conn.execute(
                        "SELECT id, job_id, queue, state, attempt, at_ms FROM _skald_job_events WHERE id > ?"
                        " ORDER BY id LIMIT ?", (after, EVENTS_PAGE),
                    ).fetchall()

                rows = await actor.read(page)
                for row in rows:
                    yield json_event("job", {"event_id": row[0], "job_id": row[1], "queue": row[2],
                                             "state": row[3], "attempt": row[4], "at": iso(row[5])}, event_id=row[0])
                    last = int(row[0])
                if len(rows) == EVENTS_PAGE:
                    continue
                with trio.move_on_after(heartbeat) as waited:
                    await wait_first(changed, actor.closing, shutdown)
                if waited.cancelled_caught:
                    yield json_event("heartbeat", {})
            if shutdown.is_set():
                yield final_event(resume_from=last)


def _ack_answers(acks: list[tuple[int, str, str | None]], done: list[Job | SkaldError]) -> list[dict[str, Any]]:
    return [
        {"id": job_id, "ok": False, "code": a.code, "detail": a.detail} if isinstance(a, SkaldError)
        else {"id": job_id, "ok": True, "state": a.state}
        for (job_id, _, _), a in zip(acks, done, strict=True)
    ]
