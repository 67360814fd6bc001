"""The pooled connection workers: one call at a time per connection, in order, on a bounded set of threads.

The property test drives random programs of calls, cancellations and closes over a few
connections sharing a small pool, with the real threads and SQLite connections, and checks
what a caller relies on whatever the threads' timing.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skald.db.connection import DocConnection, open_connection
from skald.db.worker import ConnectionWorker, WorkerPool

# until interrupted: SQLite's progress through an endless recursive CTE
ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


def _pool_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(name + "-")]


@dataclasses.dataclass
class _Record:
    """What the calls did, written from the pool's threads."""

    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    active: dict[int, int] = dataclasses.field(default_factory=dict)  # worker -> calls running now
    running: int = 0
    max_running: int = 0
    started: dict[int, list[int]] = dataclasses.field(default_factory=dict)  # worker -> call ids, in start order
    finished: set[int] = dataclasses.field(default_factory=set)
    overlaps: int = 0

    def call(self, worker: int, call: int, slow: bool, conn: DocConnection) -> int:
        with self.lock:
            self.active[worker] = self.active.get(worker, 0) + 1
            self.overlaps += self.active[worker] > 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.started.setdefault(worker, []).append(call)
        try:
            if slow:
                conn.execute(ENDLESS).fetchone()  # ends only when interrupted
            return int(conn.execute("SELECT ?", (call,)).fetchone()[0])
        finally:
            with self.lock:
                self.active[worker] -= 1
                self.running -= 1
                self.finished.add(call)


# an action: ("run", worker, slow) | ("cancel", call) | ("close", worker) | ("yield",)
_action = st.one_of(
    st.tuples(st.just("run"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("cancel"), st.integers(0, 20)),
    st.tuples(st.just("close"), st.integers(0, 2)),
    st.tuples(st.just("yield")),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(1, 3), program=st.lists(_action, max_size=25))
def test_any_interleaving_of_run_cancel_and_close(tmp_path: Path, size: int, program: list[tuple[object, ...]]) -> None:
    trio.run(_interleaving, tmp_path, size, program)


async def _interleaving(tmp_path: Path, size: int, program: list[tuple[object, ...]]) -> None:
    record = _Record()
    pool = WorkerPool(size, name="skald-test-pool")
    conns: dict[int, list[DocConnection]] = {0: [], 1: [], 2: []}

    def opener(index: int) -> DocConnection:
        conn = open_connection(tmp_path / f"w{index}.sqlite3")
        conns[index].append(conn)
        return conn

    workers = [ConnectionWorker(partial(opener, i), f"w{i}", pool) for i in range(3)]
    closed: set[int] = set()
    scopes: list[trio.CancelScope] = []
    calls: list[tuple[int, bool]] = []  # call id -> (worker, slow)
    submitted: dict[int, list[int]] = {0: [], 1: [], 2: []}
    results: dict[int, object] = {}  # call id -> its value, "cancelled", or the exception type

    async def call(call_id: int, worker: int, slow: bool, task_status: trio.TaskStatus[None]) -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            task_status.started()
            try:
                results[call_id] = await workers[worker].run(partial(record.call, worker, call_id, slow))
            except trio.ClosedResourceError:
                results[call_id] = trio.ClosedResourceError
            except sqlite3.OperationalError:
                results[call_id] = sqlite3.OperationalError
        if scope.cancelled_caught:
            results[call_id] = "cancelled"

    async with trio.open_nursery() as nursery:
        for action in program:
            if action[0] == "run":
                worker, slow = int(action[1]), bool(action[2])  # type: ignore[call-overload]
                call_id = len(calls)
                calls.append((worker, slow))
                if worker not in closed:
                    submitted[worker].append(call_id)
                await nursery.start(call, call_id, worker, slow)
            elif action[0] == "cancel" and scopes:
                scopes[int(action[1]) % len(scopes)].cancel()  # type: ignore[call-overload]
            elif action[0] == "close":
                index = int(action[1])  # type: ignore[call-overload]
                # slow calls end only when cancelled (and may hold every thread of the pool)
                for call_id, (_worker, slow) in enumerate(calls):
                    if slow:
                        scopes[call_id].cancel()
                await workers[index].aclose()
                closed.add(index)
            else:
                await trio.lowlevel.checkpoint()
        for call_id, (_worker, slow) in enumerate(calls):
            if slow:
                scopes[call_id].cancel()
    for worker in workers:
        await worker.aclose()
        await worker.aclose()  # idempotent
    with pytest.raises(trio.ClosedResourceError):
        await workers[0].run(lambda conn: None)
    await pool.aclose()

    assert record.overlaps == 0  # never two calls at once on one connection
    assert record.max_running <= size  # never more threads than the pool's size
    for worker in range(3):  # each connection ran its calls in the order they were made
        started = record.started.get(worker, [])
        assert started == [c for c in submitted[worker] if c in started]
    for call_id, (worker, slow) in enumerate(calls):
        result = results[call_id]
        if call_id in record.finished:
            # it ran to the end (or to its interruption), and no other call began meanwhile
            assert result in (call_id, "cancelled", sqlite3.OperationalError), result
            if slow:
                assert result == "cancelled"  # interrupted by its cancellation, never left running
        else:  # withdrawn before it started, or refused: the worker was closed
            assert call_id not in record.started.get(worker, [])
            assert result in ("cancelled", trio.ClosedResourceError), result
    for index in range(3):  # every connection was closed (on a pool thread)
        for conn in conns[index]:
            with pytest.raises(sqlite3.ProgrammingError):
                conn.execute("SELECT 1")
    assert _pool_threads("skald-test-pool") == []


async def test_a_call_cancelled_before_its_turn_never_runs(tmp_path: Path) -> None:
    pool = WorkerPool(1, name="skald-test-pool")
    busy = ConnectionWorker(lambda: open_connection(tmp_path / "a.sqlite3"), "a", pool)
    other = ConnectionWorker(lambda: open_connection(tmp_path / "b.sqlite3"), "b", pool)
    gate = threading.Event()
    ran: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(busy.run, lambda conn: gate.wait(30))  # the pool's only thread
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0) as scope:
            await other.run(lambda conn: ran.append("b"))
        assert scope.cancelled_caught
        gate.set()
    assert await other.run(lambda conn: conn.execute("SELECT 7").fetchone()[0]) == 7
    assert ran == []
    await busy.aclose()
    await other.aclose()
    await pool.aclose()
    assert _pool_threads("skald-test-pool") == []


async def test_threads_are_bounded_and_shared_by_many_connections(tmp_path: Path) -> None:
    pool = WorkerPool(4, name="skald-test-pool")
    workers = [
        ConnectionWorker(partial(open_connection, tmp_path / f"d{i}.sqlite3"), f"d{i}", pool) for i in range(50)
    ]
    peak = 0

    async def write(worker: ConnectionWorker, i: int) -> None:
        nonlocal peak
        await worker.run(lambda conn: conn.execute("CREATE TABLE IF NOT EXISTS t (x)"))
        await worker.run(lambda conn: conn.execute("INSERT INTO t VALUES (?)", (i,)))
        peak = max(peak, len(_pool_threads("skald-test-pool")))

    async with trio.open_nursery() as nursery:
        for i, worker in enumerate(workers):
            nursery.start_soon(write, worker, i)
    for i, worker in enumerate(workers):
        assert await worker.run(lambda conn: conn.execute("SELECT x FROM t").fetchall()) == [(i,)]
        await worker.aclose()
    assert 1 <= peak <= 4
    await pool.aclose()
    assert _pool_threads("skald-test-pool") == []


async def test_an_error_opening_the_connection_is_raised_by_the_first_call(tmp_path: Path) -> None:
    pool = WorkerPool(1, name="skald-test-pool")
    missing = tmp_path / "no" / "such" / "dir" / "d.sqlite3"
    worker = ConnectionWorker(lambda: open_connection(missing, readonly=True), "d", pool)
    with pytest.raises(sqlite3.OperationalError):
        await worker.run(lambda conn: None)
    await worker.aclose()
    await pool.aclose()
