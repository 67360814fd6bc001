"""Job workers for the client library: :class:`AsyncWorker` (trio or asyncio) and :class:`Worker` (threads).

Both run ``concurrency`` slots, each fetching one job at a time (long poll) from
the queues it has handlers for, calling the queue's handler with a
:class:`JobContext`, then acking its return value or failing it with the
exception and its traceback. One heartbeat loop extends every running job's lease
in one request, carrying the handlers' :meth:`~JobContext.progress` and
:meth:`~JobContext.checkpoint`, and tells each handler when its job was cancelled
(:attr:`JobContext.cancelled`).

Stopping (:meth:`stop`, or SIGTERM/SIGINT with ``handle_signals=True``) is
graceful: no new job is fetched, running handlers get ``grace_seconds`` to
finish (and are acked as usual); a job still running after that is handed back
(failed with ``worker stopped``, so it is retried elsewhere with its checkpoint).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio

from skald.client.errors import SkaldClientError

if TYPE_CHECKING:
    from skald.client.aio import AsyncClient
    from skald.client.blocking import Client

HANDED_BACK = "worker stopped before the job finished; handed back"


class JobContext:
    """What a handler gets: the job, and the ways to report on it."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.id: int = job["id"]
        self.queue: str = job["queue"]
        self.payload: Any = job["payload"]
        self.attempt: int = job["attempt"]
        self.lease: str = job["lease"]["token"]
        self.saved_checkpoint: Any = job.get("checkpoint")
        """The checkpoint an earlier attempt left (None on a first run)."""
        self._progress: Any = None
        self._checkpoint: Any = None
        self._dirty = False
        self._cancelled = threading.Event()
        self.lost = False
        """Set when a heartbeat found the lease gone (expired and taken over): the ack will be refused."""

    def checkpoint(self, value: Any) -> None:
        """Keep ``value`` with the job (sent with the next heartbeat, and on failure): a retry resumes from it."""
        self._checkpoint, self._dirty = value, True
        self.saved_checkpoint = value

    def progress(self, value: Any) -> None:
        """Show ``value`` (any JSON) as the job's progress, with the next heartbeat."""
        self._progress, self._dirty = value, True

    @property
    def cancelled(self) -> bool:
        """True once an operator asked for this job to stop (seen through a heartbeat)."""
        return self._cancelled.is_set()

    def _beat(self) -> dict[str, Any]:
        beat: dict[str, Any] = {"id": self.id, "lease": self.lease}
        if self._dirty:
            beat["progress"], beat["checkpoint"] = self._progress, self._checkpoint
            self._dirty = False
        return beat

    def _answer(self, answer: dict[str, Any]) -> None:
        if answer.get("cancel"):
            self._cancelled.set()
        if not answer.get("ok", True):
            self.lost = True


def _failure(exc: BaseException) -> tuple[str, str]:
    return f"{type(exc).__name__}: {exc}", "".join(traceback.format_exception(exc))


class _Settings:
    def __init__(self, db_id: str, handlers: Mapping[str, Any], concurrency: int, worker_id: str | None,
                 lease_seconds: float, heartbeat_seconds: float | None, wait_seconds: float,
                 grace_seconds: float) -> None:
        if not handlers:
            raise ValueError("a worker needs at least one queue handler")
        self.db_id = db_id
        self.handlers = dict(handlers)
        self.queues = list(handlers)
        self.concurrency = concurrency
        self.worker_id = worker_id or f"worker-{uuid.uuid4().hex[:12]}"
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds or lease_seconds / 3
        self.wait_seconds = wait_seconds
        self.grace_seconds = grace_seconds


class AsyncWorker:
    """``await AsyncWorker(client, "shop", {"mail": send_mail}).run()`` under trio or asyncio."""

    def __init__(
        self, client: AsyncClient, db_id: str, handlers: Mapping[str, Callable[[JobContext], Awaitable[Any]]], *,
        concurrency: int = 4, worker_id: str | None = None, lease_seconds: float = 30.0,
        heartbeat_seconds: float | None = None, wait_seconds: float = 20.0, grace_seconds: float = 10.0,
    ) -> None:
        self.client = client
        self.settings = _Settings(db_id, handlers, concurrency, worker_id, lease_seconds, heartbeat_seconds,
                                  wait_seconds, grace_seconds)
        self.active: dict[int, JobContext] = {}
        self._scopes: dict[int, anyio.CancelScope] = {}
        self._fetching: set[anyio.CancelScope] = set()
        self._stopping = anyio.Event()
        self.processed = 0

    def stop(self) -> None:
        """Fetch nothing more; give running handlers ``grace_seconds``, then hand their jobs back."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        for scope in list(self._fetching):
            scope.cancel()
        deadline = anyio.current_time() + self.settings.grace_seconds
        for scope in self._scopes.values():
            scope.deadline = min(scope.deadline, deadline)

    async def run(self, *, handle_signals: bool = False) -> None:
        """Work until :meth:`stop` (or SIGTERM/SIGINT when ``handle_signals``); returns when every slot ended."""
        async with anyio.create_task_group() as outer:
            if handle_signals:
                outer.start_soon(self._on_signals)
            outer.start_soon(self._heartbeats)
            async with anyio.create_task_group() as slots:
                for _ in range(self.settings.concurrency):
                    slots.start_soon(self._slot)
            outer.cancel_scope.cancel()

    async def _on_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                self.stop()

    async def _slot(self) -> None:
        s = self.settings
        while not self._stopping.is_set():
            job = None
            with anyio.CancelScope() as scope:
                self._fetching.add(scope)
                try:
                    job = await self.client.fetch_job(s.db_id, s.queues, s.worker_id, s.lease_seconds, s.wait_seconds)
                except SkaldClientError:
                    await anyio.sleep(1)  # the server is away: try again soon
                finally:
                    self._fetching.discard(scope)
            if job is not None:
                await self._run_one(JobContext(job))

    async def _run_one(self, ctx: JobContext) -> None:
        s = self.settings
        self.active[ctx.id] = ctx
        outcome: tuple[str, Any] = ("handed back", None)
        with anyio.CancelScope() as scope:
            self._scopes[ctx.id] = scope
            if self._stopping.is_set():
                scope.deadline = anyio.current_time() + s.grace_seconds
            try:
                outcome = ("ack", await s.handlers[ctx.queue](ctx))
            except Exception as exc:
                outcome = ("fail", exc)
        del self._scopes[ctx.id]
        try:
            with anyio.CancelScope(shield=True), contextlib.suppress(SkaldClientError):
                if ctx.lost:
                    return
                if outcome[0] == "ack":
                    await self.client.ack_job(s.db_id, ctx.id, ctx.lease, outcome[1])
                elif outcome[0] == "fail":
                    error, backtrace = _failure(outcome[1])
                    await self.client.fail_job(s.db_id, ctx.id, ctx.lease, error, backtrace, ctx.saved_checkpoint)
                else:
                    await self.client.fail_job(s.db_id, ctx.id, ctx.lease, HANDED_BACK, None, ctx.saved_checkpoint)
        finally:
            del self.active[ctx.id]
            self.processed += 1

    async def _heartbeats(self) -> None:
        s = self.settings
        while True:
            await anyio.sleep(s.heartbeat_seconds)
            running = list(self.active.values())
            if not running:
                continue
            try:
                answers = await self.client.heartbeat_jobs(s.db_id, s.worker_id, [c._beat() for c in running],
                                                           s.lease_seconds)
            except SkaldClientError:
                continue  # the next beat tries again; the lease has two more beats of margin
            by_id = {c.id: c for c in running}
            for answer in answers:
                ctx = by_id.get(answer["id"])
                if ctx is not None:
                    ctx._answer(answer)
                    if ctx.lost and ctx.id in self._scopes:
                        self._scopes[ctx.id].cancel()  # someone else runs it now


class Worker:
    """``Worker(client, "shop", {"mail": send_mail}).run()``: handlers run in ``concurrency`` threads."""

    def __init__(
        self, client: Client, db_id: str, handlers: Mapping[str, Callable[[JobContext], Any]], *,
        concurrency: int = 4, worker_id: str | None = None, lease_seconds: float = 30.0,
        heartbeat_seconds: float | None = None, wait_seconds: float = 5.0, grace_seconds: float = 10.0,
    ) -> None:
        self.client = client
        self.settings = _Settings(db_id, handlers, concurrency, worker_id, lease_seconds, heartbeat_seconds,
                                  wait_seconds, grace_seconds)
        self.active: dict[int, JobContext] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.processed = 0

    def stop(self) -> None:
        """Fetch nothing more (a slot notices within ``wait_seconds``); see :meth:`run` for the rest."""
        self._stopping.set()

    def run(self, *, handle_signals: bool = False) -> None:
        """Work until :meth:`stop` (or SIGTERM/SIGINT when ``handle_signals``, main thread only).

        After a stop, handlers get ``grace_seconds`` to finish; jobs still running then are handed
        back and ``run`` returns (their threads are daemons: a late ack is refused by the server).
        """
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stop())
        slots = [threading.Thread(target=self._slot, daemon=True, name=f"skald-job-slot-{n}")
                 for n in range(self.settings.concurrency)]
        beats = threading.Thread(target=self._heartbeats, daemon=True, name="skald-job-heartbeats")
        for thread in (*slots, beats):
            thread.start()
        self._stopping.wait()
        deadline = time.monotonic() + self.settings.wait_seconds + self.settings.grace_seconds
        for thread in slots:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = list(self.active.values())
        for ctx in left:
            ctx.lost = True  # its handler's own ack/fail is skipped
            with contextlib.suppress(SkaldClientError):
                self.client.fail_job(self.settings.db_id, ctx.id, ctx.lease, HANDED_BACK, None, ctx.saved_checkpoint)
        beats.join(self.settings.heartbeat_seconds + 1)

    def _slot(self) -> None:
        s = self.settings
        while not self._stopping.is_set():
            try:
                job = self.client.fetch_job(s.db_id, s.queues, s.worker_id, s.lease_seconds, s.wait_seconds)
            except SkaldClientError:
                self._stopping.wait(1)
                continue
            if job is None:
                continue
            ctx = JobContext(job)
            with self._lock:
                self.active[ctx.id] = ctx
            try:
                result = s.handlers[ctx.queue](ctx)
            except Exception as exc:
                outcome: tuple[str, Any] = ("fail", exc)
            else:
                outcome = ("ack", result)
            with self._lock:
                handed_back = ctx.lost
                self.active.pop(ctx.id, None)
            if not handed_back:
                with contextlib.suppress(SkaldClientError):
                    if outcome[0] == "ack":
                        self.client.ack_job(s.db_id, ctx.id, ctx.lease, outcome[1])
                    else:
                        error, backtrace = _failure(outcome[1])
                        self.client.fail_job(s.db_id, ctx.id, ctx.lease, error, backtrace, ctx.saved_checkpoint)
            self.processed += 1

    def _heartbeats(self) -> None:
        s = self.settings
        while not self._stopping.wait(s.heartbeat_seconds) or self.active:
            with self._lock:
                running = list(self.active.values())
            if not running:
                continue
            try:
                answers = self.client.heartbeat_jobs(s.db_id, s.worker_id, [c._beat() for c in running],
                                                     s.lease_seconds)
            except SkaldClientError:
                continue
            by_id = {c.id: c for c in running}
            for answer in answers:
                if answer["id"] in by_id:
                    by_id[answer["id"]]._answer(answer)
