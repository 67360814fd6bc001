"""Durable background jobs in the service database.

A job is a row of ``jobs`` (see ``migrations/service/0004_jobs_blobs.sql``).
:class:`JobQueue` offers ``enqueue``, ``claim_next`` (atomic, oldest due first),
``complete``, ``fail`` (attempts + 1, retry after ``2**attempts`` seconds,
``failed`` once ``max_attempts`` is reached) and ``reclaim_expired`` (a job
left ``running`` by a crash becomes due again once its lease expires; that
counts as a failed attempt). All writes go through the service actor, so
claims are serialized and atomic. Times come from an injectable ``clock``
(Unix seconds).

:class:`JobWorker` runs handlers for the job types registered with it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog
import trio
import trio.lowlevel
from prometheus_client import CollectorRegistry, Counter

from skald.db.actor import DocumentActor
from skald.db.connection import DocConnection
from skald.errors import ServiceUnavailable

log = structlog.get_logger("skald.db.background")

Clock = Callable[[], float]
Handler = Callable[[dict[str, Any]], Awaitable[None]]

DEFAULT_LEASE_SECONDS = 300.0
MAX_BACKOFF_SECONDS = 3600.0


@dataclasses.dataclass(frozen=True)
class Job:
    id: int
    type: str
    payload: dict[str, Any]
    status: str
    attempts: int
    max_attempts: int
    run_after: float
    last_error: str | None
    lease_expires_at: float | None


_COLUMNS = "id, type, payload_json, status, attempts, max_attempts, run_after, last_error, lease_expires_at"


def _job(row: tuple[Any, ...]) -> Job:
    return Job(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5], row[6], row[7], row[8])


def backoff_seconds(attempts: int) -> float:
    """Delay before retry number ``attempts`` (1, 2, ...): ``2**attempts`` seconds, capped."""
    return float(min(2**attempts, MAX_BACKOFF_SECONDS))


# ---- operations on the service connection (run inside the service actor) -----------------------


def enqueue_op(
    conn: DocConnection,
    job_type: str,
    payload: dict[str, Any],
    now: float,
    run_after: float,
    max_attempts: int,
) -> int:
    cur = conn.execute(
        "INSERT INTO jobs (type, payload_json, status, attempts, max_attempts, run_after, created_at,"
        " updated_at)"
        " VALUES (?, ?, 'pending', 0, ?, ?, ?, ?)",
        (job_type, json.dumps(payload), max_attempts, run_after, now, now),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def claim_next_op(conn: DocConnection, types: Iterable[str], now: float, lease_seconds: float) -> Job | None:
    kinds = list(types)
    if not kinds:
        return None
    marks = ",".join("?" * len(kinds))
    row = conn.execute(
        f"SELECT id FROM jobs WHERE status = 'pending' AND run_after <= ? AND type IN ({marks})"
        " ORDER BY run_after, id LIMIT 1",
        (now, *kinds),
    ).fetchone()
    if row is None:
        return None
    conn.execute(
        "UPDATE jobs SET status = 'running', lease_expires_at = ?, updated_at = ? WHERE id = ?",
        (now + lease_seconds, now, row[0]),
    )
    return get_op(conn, row[0])


def get_op(conn: DocConnection, job_id: int) -> Job | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return _job(row) if row else None


def complete_op(conn: DocConnection, job_id: int, now: float) -> None:
    conn.execute(
        "UPDATE jobs SET status = 'completed', lease_expires_at = NULL, updated_at = ? WHERE id = ?",
        (now, job_id),
    )


def fail_op(conn: DocConnection, job_id: int, error: str, now: float) -> Job | None:
    row = conn.execute("SELECT attempts, max_attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        return None
    attempts = row[0] + 1
    if attempts >= row[1]:
        conn.execute(
            "UPDATE jobs SET status = 'failed', attempts = ?, last_error = ?, lease_expires_at = NULL,"
            " updated_at = ? WHERE id = ?",
            (attempts, error[:2000], now, job_id),
        )
    else:
        conn.execute(
            "UPDATE jobs SET status = 'pending', attempts = ?, last_error = ?, lease_expires_at = NULL,"
            " run_after = ?, updated_at = ? WHERE id = ?",
            (attempts, error[:2000], now + backoff_seconds(attempts), now, job_id),
        )
    return get_op(conn, job_id)


def reclaim_expired_op(conn: DocConnection, now: float) -> list[int]:
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM jobs WHERE status = 'running' AND lease_expires_at IS NOT NULL"
            " AND lease_expires_at <= ?",
            (now,),
        )
    ]
    for job_id in ids:
        fail_op(conn, job_id, "lease expired (worker crashed or stalled)", now)
    return ids


# ---- async facade -------------------------------------------------------------------------------


class JobQueue:
    """The jobs table, through the service actor. ``clock`` returns Unix seconds."""

    def __init__(self, service: Callable[[], DocumentActor], clock: Clock = time.time) -> None:
        self._service = service
        self.clock = clock
        self.enqueued = trio.Event()

    async def enqueue(
        self,
        job_type: str,
        payload: dict[str, Any] | None = None,
        *,
        delay: float = 0.0,
        max_attempts: int = 5,
    ) -> int:
        now = self.clock()
        data = payload or {}
        job_id = await self._service().write(
            lambda conn: enqueue_op(conn, job_type, data, now, now + delay, max_attempts)
        )
        self.enqueued.set()
        self.enqueued = trio.Event()
        return job_id

    async def enqueue_unless_queued(self, job_type: str, payload: dict[str, Any] | None = None) -> int | None:
        """Enqueue ``job_type`` unless one is already pending or running (periodic jobs)."""
        now = self.clock()
        data = payload or {}

        def op(conn: DocConnection) -> int | None:
            busy = conn.execute(
                "SELECT 1 FROM jobs WHERE type = ? AND status IN ('pending', 'running') LIMIT 1", (job_type,)
            ).fetchone()
            return None if busy else enqueue_op(conn, job_type, data, now, now, 5)

        return await self._service().write(op)

    async def claim_next(
        self, types: Iterable[str], lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> Job | None:
        now = self.clock()
        kinds = list(types)
        return await self._service().write(lambda conn: claim_next_op(conn, kinds, now, lease_seconds))

    async def complete(self, job_id: int) -> None:
        now = self.clock()
        await self._service().write(lambda conn: complete_op(conn, job_id, now))

    async def fail(self, job_id: int, error: str) -> Job | None:
        now = self.clock()
        return await self._service().write(lambda conn: fail_op(conn, job_id, error, now))

    async def reclaim_expired(self) -> list[int]:
        now = self.clock()
        return await self._service().write(lambda conn: reclaim_expired_op(conn, now))

    async def get(self, job_id: int) -> Job | None:
        return await self._service().read(lambda conn: get_op(conn, job_id))


class JobWorker:
    """Runs due jobs one at a time with the handler registered for their type.

    A handler that raises fails its job (retried with backoff). ``run`` polls
    every ``poll_seconds`` (sooner when a job is enqueued here) and returns
    when the service database stops; cancel it to stop sooner (a job cut off
    mid-run stays ``running`` and is reclaimed after its lease).
    """

    def __init__(
        self,
        queue: JobQueue,
        *,
        poll_seconds: float = 5.0,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.queue = queue
        self.poll_seconds = poll_seconds
        self.lease_seconds = lease_seconds
        self.handlers: dict[str, Handler] = {}
        self.periodic: list[tuple[str, float]] = []
        self.runs = Counter(
            "skald_jobs_runs_total",
            "Background job runs by type and outcome (completed, retry, failed)",
            ["type", "outcome"],
            registry=registry,
        )

    def register(self, job_type: str, handler: Handler, *, every: float | None = None) -> None:
        """Run ``handler(payload)`` for jobs of ``job_type``; ``every`` also enqueues one periodically."""
        self.handlers[job_type] = handler
        if every is not None:
            self.periodic.append((job_type, every))

    async def run_once(self) -> bool:
        """Reclaim expired leases, then run one due job if any; return whether one ran."""
        await self.queue.reclaim_expired()
        job = await self.queue.claim_next(self.handlers, self.lease_seconds)
        if job is None:
            return False
        try:
            await self.handlers[job.type](job.payload)
        except Exception as exc:
            log.warning("job failed", job_id=job.id, type=job.type, error=repr(exc))
            failed = await self.queue.fail(job.id, repr(exc))
            self.runs.labels(
                job.type, failed.status if failed and failed.status == "failed" else "retry"
            ).inc()
        else:
            await self.queue.complete(job.id)
            self.runs.labels(job.type, "completed").inc()
        return True

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        next_periodic = {job_type: 0.0 for job_type, _ in self.periodic}
        try:
            while True:
                now = trio.current_time()
                for job_type, every in self.periodic:
                    if now >= next_periodic[job_type]:
                        await self.queue.enqueue_unless_queued(job_type)
                        next_periodic[job_type] = now + every
                while await self.run_once():
                    await trio.lowlevel.checkpoint()
                enqueued = self.queue.enqueued
                with trio.move_on_after(self.poll_seconds):
                    await enqueued.wait()
        except ServiceUnavailable:
            log.debug("job worker stopped: service database closed")
