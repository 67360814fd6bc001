"""A dedicated thread that owns one SQLite connection.

The event loop never touches SQLite: :meth:`ConnectionWorker.run` hands a
plain ``fn(conn)`` to the worker's thread and awaits the result. A dedicated
thread (rather than trio's shared thread cache) means closing a worker joins
its thread and closes its connection: nothing is left behind.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

import outcome
import trio

from skald.db.connection import DocConnection

T = TypeVar("T")

_Job = tuple[Callable[[DocConnection], object], Callable[[outcome.Outcome[object]], None]]


class ConnectionWorker:
    """One thread, one connection. Callers serialize their calls to ``run``.

    Must be created inside a trio run. The connection opens on the worker
    thread on first use; an error opening it is raised by that first ``run``.
    """

    def __init__(self, opener: Callable[[], DocConnection], name: str) -> None:
        self._opener = opener
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()  # None stops the thread
        self._conn: DocConnection | None = None
        self._token = trio.lowlevel.current_trio_token()
        self._stopped = trio.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                break
            fn, done = job
            result: outcome.Outcome[object] = outcome.capture(self._call, fn)
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(done, result)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._stopped.set)

    def _call(self, fn: Callable[[DocConnection], object]) -> object:
        if self._conn is None:
            self._conn = self._opener()
        return fn(self._conn)

    async def run(self, fn: Callable[[DocConnection], T]) -> T:
        """Run ``fn(conn)`` in the worker thread and return its result.

        If the caller is cancelled while ``fn`` runs, SQLite is interrupted
        (``conn.interrupt()``) and the call still waits for the thread to
        finish, so the connection is never used by two calls at once.
        """
        if self._closed:
            raise trio.ClosedResourceError("worker closed")
        finished = trio.Event()
        box: list[outcome.Outcome[T]] = []

        def done(result: outcome.Outcome[object]) -> None:
            box.append(result)  # type: ignore[arg-type]  # fn returns T
            finished.set()

        self._jobs.put((fn, done))
        try:
            await finished.wait()
        except trio.Cancelled:
            conn = self._conn
            if conn is not None:
                conn.interrupt()
            with trio.CancelScope(shield=True):
                await finished.wait()
            raise
        return box[0].unwrap()

    async def aclose(self) -> None:
        """Finish queued work, close the connection and join the thread.

        Shielded from cancellation: the thread must not outlive its owner.
        """
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        with trio.CancelScope(shield=True):
            await self._stopped.wait()
        # The thread has closed its connection and is returning: join is immediate.
        self._thread.join()
