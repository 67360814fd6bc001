"""SQLite connections and the bounded pool of OS threads that runs their calls.

The event loop never touches SQLite: :meth:`ConnectionWorker.run` hands a plain
``fn(conn)`` to a thread and awaits the result. Threads are not dedicated to a
connection (10,000 open documents would mean 20,000 threads): each
:class:`ConnectionWorker` keeps its own queue of calls, and whichever thread of
its :class:`WorkerPool` picks the connection up drains that queue one call at a
time. So a connection still sees one call at a time, in order, while the
process runs at most ``pool.size`` SQLite calls at once.

Connections open with ``check_same_thread=False`` (skald.db.connection): safe,
because the pool never runs two calls of one connection at once, and each call
happens-before the next (they are handed over under the pool's lock).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
from collections.abc import Callable
from typing import TypeVar

import outcome
import trio

from skald.db.connection import DocConnection

T = TypeVar("T")

IDLE_THREAD_SECONDS = 10.0
"""A pool thread with nothing to do for this long exits (the next call starts one again)."""
INTERRUPT_AGAIN_SECONDS = 0.05
"""How often a cancelled call that is still running is interrupted again (see ConnectionWorker.run)."""


class CallCancelled(Exception):
    """A call's caller was cancelled after a thread took it but before ``fn`` started: it never ran."""


@dataclasses.dataclass(eq=False)
class _Job:
    fn: Callable[[DocConnection], object] | None  # None: close the connection (the worker's last job)
    done: Callable[[outcome.Outcome[object]], None]
    cancelled: bool = False  # guarded by the pool's lock


class WorkerPool:
    """At most ``size`` OS threads, shared by every :class:`ConnectionWorker` created on it.

    Threads start on demand and exit after :data:`IDLE_THREAD_SECONDS` without work. A
    connection with queued calls waits its turn in FIFO order behind the other connections
    when every thread is busy; a connection that just ran goes to the back of the line, so
    a busy document cannot starve the others. Thread-safe; :meth:`aclose` must run in trio.
    """

    def __init__(self, size: int, *, name: str = "skald-db", idle_seconds: float = IDLE_THREAD_SECONDS) -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one thread")
        self.size = size
        self._name = name
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._ready: collections.deque[ConnectionWorker] = collections.deque()
        self._threads: list[threading.Thread] = []  # started and maybe still running (pruned at each start)
        self._live = 0  # threads that have not exited their loop
        self._idle = 0  # threads waiting for work
        self._closed = False
        self._serial = 0

    @property
    def threads(self) -> int:
        """Threads running now (busy or waiting for work)."""
        with self._lock:
            return self._live

    # ---- called with the lock held --------------------------------------------------------------

    def _schedule(self, worker: ConnectionWorker) -> None:
        """``worker`` has a queued call: line it up unless it is lined up or running."""
        if worker._lined_up:
            return
        # (after aclose too: a worker closing late still gets a thread to close its connection on)
        worker._lined_up = True
        self._ready.append(worker)
        # A thread that was notified but has not woken yet still counts as idle: start another
        # one when more connections wait than idle threads could take.
        if len(self._ready) > self._idle and self._live < self.size:
            self._start_thread()
        self._work.notify()

    def _start_thread(self) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        self._serial += 1
        thread = threading.Thread(target=self._main, name=f"{self._name}-{self._serial}", daemon=True)
        self._live += 1
        self._threads.append(thread)
        thread.start()

    # ---- the threads -----------------------------------------------------------------------------

    def _main(self) -> None:
        with self._lock:
            try:
                while True:
                    while not self._ready:
                        if self._closed:
                            return
                        self._idle += 1
                        notified = self._work.wait(self._idle_seconds)
                        self._idle -= 1
                        if not notified and not self._ready and not self._closed:
                            return  # idle too long: the next call starts a thread again
                    worker = self._ready.popleft()
                    if not worker._jobs:  # its only call was withdrawn (cancelled before it ran)
                        worker._lined_up = False
                        continue
                    job = worker._jobs.popleft()
                    worker._running = job
                    self._lock.release()
                    try:
                        result = outcome.capture(worker._call, job)
                    finally:
                        self._lock.acquire()
                    worker._running = None
                    if worker._jobs:
                        self._ready.append(worker)  # the back of the line: fair to other documents
                    else:
                        worker._lined_up = False
                    worker._deliver(job, result)
            finally:
                self._live -= 1

    async def aclose(self) -> None:
        """Let the threads finish the calls lined up, then stop and join them.

        Callers close their workers first. Shielded: no thread outlives its pool.
        """
        with self._lock:
            self._closed = True
            self._work.notify_all()
            threads = list(self._threads)
        with trio.CancelScope(shield=True):
            for thread in threads:
                await trio.to_thread.run_sync(thread.join)


class ConnectionWorker:
    """One connection; its calls run one at a time, in order, on a thread of ``pool``.

    Must be created inside a trio run. The connection opens on first use (on a pool
    thread); an error opening it is raised by that first :meth:`run`.
    """

    def __init__(self, opener: Callable[[], DocConnection], name: str, pool: WorkerPool) -> None:
        self.name = name
        self._opener = opener
        self._pool = pool
        self._conn: DocConnection | None = None
        self._token = trio.lowlevel.current_trio_token()
        # guarded by the pool's lock:
        self._jobs: collections.deque[_Job] = collections.deque()
        self._lined_up = False  # in the pool's ready line, or running a call
        self._running: _Job | None = None
        self._closed = False
        self._stopped = trio.Event()

    # ---- on a pool thread ----------------------------------------------------------------------------

    def _call(self, job: _Job) -> object:
        if job.fn is None:  # the last job: close the connection here, on a pool thread
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
            return None
        if self._conn is None:
            self._conn = self._opener()
        with self._pool._lock:  # cancelled while the connection opened (nothing to interrupt then)
            if job.cancelled:
                raise CallCancelled("the caller was cancelled before the call started")
        return job.fn(self._conn)

    def _deliver(self, job: _Job, result: outcome.Outcome[object]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(job.done, result)

    # ---- on the event loop ---------------------------------------------------------------------------

    async def run(self, fn: Callable[[DocConnection], T]) -> T:
        """Run ``fn(conn)`` on a pool thread and return its result (or raise its error).

        Calls of one worker run in the order they were made, never two at once. If the
        caller is cancelled before ``fn`` started, ``fn`` never runs; if it is running,
        SQLite is interrupted (``conn.interrupt()``) and the call still waits for ``fn`` to
        return, so the connection is never used by two calls at once.
        Raises :class:`trio.ClosedResourceError` after :meth:`aclose`.
        """
        finished = trio.Event()
        box: list[outcome.Outcome[T]] = []

        def done(result: outcome.Outcome[object]) -> None:
            box.append(result)  # type: ignore[arg-type]  # fn returns T
            finished.set()

        job = _Job(fn, done)
        with self._pool._lock:
            if self._closed or self._pool._closed:
                raise trio.ClosedResourceError("worker closed")
            self._jobs.append(job)
            self._pool._schedule(self)
        try:
            await finished.wait()
        except trio.Cancelled:
            with self._pool._lock:
                if job in self._jobs:  # not started: withdraw it
                    self._jobs.remove(job)
                    raise
                job.cancelled = True
            with trio.CancelScope(shield=True):
                # SQLite forgets an interrupt that lands before a statement starts (sqlite3_step
                # clears it when no statement is active), e.g. while fn is still in Python: so
                # interrupt again until fn returns.
                while not finished.is_set():
                    self._interrupt(job)
                    with trio.move_on_after(INTERRUPT_AGAIN_SECONDS):
                        await finished.wait()
            raise
        return box[0].unwrap()

    def _interrupt(self, job: _Job) -> None:
        with self._pool._lock:
            # under the lock: the thread cannot have moved on to this connection's next call
            if self._running is job and self._conn is not None:
                self._conn.interrupt()

    async def aclose(self) -> None:
        """Finish the queued calls, close the connection (on a pool thread) and return.

        Shielded from cancellation: the connection must not outlive its owner. Idempotent.
        """
        with self._pool._lock:
            if not self._closed:
                self._closed = True
                if self._conn is None and not self._lined_up:
                    self._stopped.set()  # never opened, nothing queued: no thread needed
                else:
                    self._jobs.append(_Job(None, lambda _result: self._stopped.set()))
                    self._pool._schedule(self)
        with trio.CancelScope(shield=True):
            await self._stopped.wait()
