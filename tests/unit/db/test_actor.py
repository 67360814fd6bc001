from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skald.db.actor import DocumentActor
from skald.db.connection import DocConnection
from skald.errors import MailboxFull, StorageError, TransactionRolledBack


def _insert(value: int) -> Callable[[DocConnection], int]:
    def op(conn: DocConnection) -> int:
        return int(conn.execute("INSERT INTO t (v) VALUES (?)", (value,)).lastrowid or 0)

    return op


async def _started(nursery: trio.Nursery, path: Path, **kwargs: Any) -> DocumentActor:  # DocumentActor's options
    actor = DocumentActor("doc", path, **kwargs)
    await nursery.start(actor.serve)
    await actor.write(lambda c: c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)"))
    return actor


async def test_group_commit_shares_transactions_and_answers_each_caller(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        actor = await _started(nursery, tmp_path / "d.sqlite3")
        commits_before = actor.commits
        results: dict[int, int] = {}

        async def writer(i: int) -> None:
            results[i] = await actor.write(_insert(i))

        async with trio.open_nursery() as writers:
            for i in range(64):
                writers.start_soon(writer, i)
        assert actor.commits - commits_before < 64
        rows = await actor.read(lambda c: dict(c.execute("SELECT id, v FROM t").fetchall()))
        # every caller got the rowid of its own row
        assert {rows[rowid] for rowid in results.values()} == set(range(64))
        assert all(rows[rowid] == i for i, rowid in results.items())
        actor.stop()


async def test_failing_op_fails_alone(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        actor = await _started(nursery, tmp_path / "d.sqlite3")
        outcomes: dict[int, object] = {}

        def bad(conn: DocConnection) -> None:
            conn.execute("INSERT INTO t (v) VALUES (999)")
            conn.execute("INSERT INTO t (v) VALUES (NULL)")  # NOT NULL: fails after a partial write

        async def run(i: int) -> None:
            try:
                outcomes[i] = await actor.write(bad if i == 5 else _insert(i))
            except StorageError as exc:
                outcomes[i] = exc

        async with trio.open_nursery() as writers:
            for i in range(10):
                writers.start_soon(run, i)
        assert isinstance(outcomes[5], StorageError)
        values = await actor.read(lambda c: sorted(v for (v,) in c.execute("SELECT v FROM t")))
        assert values == [i for i in range(10) if i != 5]  # the failed op's partial insert is gone
        actor.stop()


async def test_full_mailbox_refuses_at_once(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        actor = await _started(nursery, tmp_path / "d.sqlite3", mailbox_size=2)
        gate = threading.Event()

        def blocking(conn: DocConnection) -> None:
            gate.wait(10)

        nursery.start_soon(actor.write, blocking)
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as queued:
            queued.start_soon(actor.write, _insert(1))
            queued.start_soon(actor.write, _insert(2))
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(MailboxFull) as info:
                await actor.write(_insert(3))
            assert info.value.status == 503
            assert info.value.headers["Retry-After"]
            gate.set()
        assert await actor.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 2
        actor.stop()


async def test_write_is_durable_when_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite3"
    async with trio.open_nursery() as nursery:
        actor = await _started(nursery, path)
        await actor.write(_insert(42))
        # read through an unrelated connection: the acknowledged write is committed
        other = sqlite3.connect(path)
        assert other.execute("SELECT v FROM t").fetchall() == [(42,)]
        other.close()
        actor.stop()


async def test_read_cannot_write(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        actor = await _started(nursery, tmp_path / "d.sqlite3")
        with pytest.raises(StorageError):
            await actor.read(lambda c: c.execute("INSERT INTO t (v) VALUES (1)"))
        actor.stop()


async def test_commit_listener_sees_tables_written(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        actor = await _started(nursery, tmp_path / "d.sqlite3")
        seen: list[frozenset[str]] = []
        remove = actor.add_commit_listener(lambda info: seen.append(info.tables))
        await actor.write(_insert(1))
        remove()
        await actor.write(_insert(2))
        assert seen == [frozenset({"t"})]
        actor.stop()


async def test_stop_answers_queued_ops_then_closes(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        actor = await _started(nursery, tmp_path / "d.sqlite3")
        results: list[int] = []

        async def writer(i: int) -> None:
            results.append(await actor.write(_insert(i)))

        for i in range(20):
            nursery.start_soon(writer, i)
        await trio.testing.wait_all_tasks_blocked()
        actor.stop()
        await actor.stopped.wait()
    assert len(results) == 20
    conn = sqlite3.connect(tmp_path / "d.sqlite3")
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 20
    conn.close()


# ---- an op that ends the transaction ------------------------------------------------------------
# INSERT OR ROLLBACK, a trigger's RAISE(ROLLBACK, ...) and SQLite's own rollback on SQLITE_FULL
# end the whole group-commit transaction, not just the op's savepoint: the ops before it in the
# batch were rolled back with it and must not be acknowledged unless they are committed again.


async def _queued_batch(actor: DocumentActor, ops: Sequence[Callable[[DocConnection], object]]) -> list[object]:
    """Run ``ops`` so that all of them land in one group commit; return each result or exception."""
    gate = threading.Event()
    outcomes: list[object] = [None] * len(ops)

    async def run(i: int) -> None:
        try:
            outcomes[i] = await actor.write(ops[i])
        except Exception as exc:
            outcomes[i] = exc

    async with trio.open_nursery() as writers:
        writers.start_soon(actor.write, lambda conn: gate.wait(10))  # holds the writer thread
        await trio.testing.wait_all_tasks_blocked()
        for i in range(len(ops)):
            writers.start_soon(run, i)
        await trio.testing.wait_all_tasks_blocked()
        assert actor.mailbox_depth == len(ops)  # all queued behind the gate: one batch
        gate.set()
    return outcomes


def _sql(sql: str, *args: object) -> Callable[[DocConnection], int]:
    def op(conn: DocConnection) -> int:
        return int(conn.execute(sql, args).lastrowid or 0)

    return op


async def _values(actor: DocumentActor) -> list[int]:
    return await actor.read(lambda c: sorted(v for (v,) in c.execute("SELECT v FROM t")))


async def test_op_that_rolls_back_the_transaction_fails_alone(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        actor = await _started(nursery, tmp_path / "d.sqlite3")
        await actor.write(lambda c: c.execute("CREATE UNIQUE INDEX t_v ON t (v)"))
        await actor.write(_insert(-1))
        ops = [_insert(i) if i % 2 else _sql("INSERT OR ROLLBACK INTO t (v) VALUES (-1)") for i in range(40)]
        outcomes = await _queued_batch(actor, ops)
        acked = sorted(i for i, result in enumerate(outcomes) if not isinstance(result, Exception))
        assert acked == list(range(1, 40, 2))
        assert await _values(actor) == [-1, *acked]  # every acknowledged insert is in the table
        for i in range(0, 40, 2):
            refused = outcomes[i]
            assert isinstance(refused, TransactionRolledBack)
            assert refused.status == 409
        actor.stop()


_examples = itertools.count()


@given(plan=st.lists(st.sampled_from(["insert", "rollback", "fail"]), min_size=1, max_size=30))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_mix_acknowledges_exactly_what_committed(tmp_path: Path, plan: list[str]) -> None:
    # "fail" errors inside its savepoint (NOT NULL), "rollback" ends the whole transaction.
    path = tmp_path / f"mix-{next(_examples)}.sqlite3"

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            actor = await _started(nursery, path)
            await actor.write(lambda c: c.execute("CREATE UNIQUE INDEX t_v ON t (v)"))
            await actor.write(_insert(-1))
            ops = [
                {
                    "insert": _insert(i),
                    "rollback": _sql("INSERT OR ROLLBACK INTO t (v) VALUES (-1)"),
                    "fail": _sql("INSERT INTO t (v) VALUES (NULL)"),
                }[kind]
                for i, kind in enumerate(plan)
            ]
            outcomes = await _queued_batch(actor, ops)
            acked = [i for i, result in enumerate(outcomes) if not isinstance(result, Exception)]
            assert acked == [i for i, kind in enumerate(plan) if kind == "insert"]
            assert await _values(actor) == [-1, *acked]
            for i, kind in enumerate(plan):
                if kind == "rollback":
                    assert isinstance(outcomes[i], TransactionRolledBack)
                elif kind == "fail":
                    assert isinstance(outcomes[i], StorageError)
            actor.stop()

    trio.run(main)


async def test_trigger_raise_rollback_fails_only_its_op(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        actor = await _started(nursery, tmp_path / "d.sqlite3")
        await actor.write(
            lambda c: c.execute(
                "CREATE TRIGGER no_13 BEFORE INSERT ON t WHEN NEW.v = 13 "
                "BEGIN SELECT RAISE(ROLLBACK, 'thirteen is unlucky'); END"
            )
        )
        outcomes = await _queued_batch(actor, [_insert(i) for i in range(10, 17)])
        assert await _values(actor) == [10, 11, 12, 14, 15, 16]
        assert all(isinstance(r, int) for i, r in enumerate(outcomes) if i != 3)
        error = outcomes[3]
        assert isinstance(error, TransactionRolledBack)
        assert "thirteen is unlucky" in error.detail
        actor.stop()


async def test_disk_full_rolls_back_only_the_op_that_hit_it(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        actor = await _started(nursery, tmp_path / "d.sqlite3")
        await actor.write(lambda c: c.execute("ALTER TABLE t ADD COLUMN pad BLOB"))
        pages = await actor.read(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
        # SQLite answers SQLITE_FULL past max_page_count and rolls the whole transaction back.
        await actor.exclusive(lambda c: c.execute(f"PRAGMA max_page_count = {pages + 2}"))

        def huge(conn: DocConnection) -> None:
            conn.execute("INSERT INTO t (v, pad) VALUES (999, zeroblob(1000000))")

        outcomes = await _queued_batch(actor, [_insert(1), _insert(2), huge, _insert(3)])
        assert await _values(actor) == [1, 2, 3]
        assert [isinstance(r, int) for r in outcomes] == [True, True, False, True]
        assert isinstance(outcomes[2], TransactionRolledBack)
        assert "full" in outcomes[2].detail
        actor.stop()


async def _expect_rolled_back(actor: DocumentActor, op: Callable[[DocConnection], object]) -> None:
    with pytest.raises(TransactionRolledBack):
        await actor.write(op)


async def test_after_commit_runs_once_for_ops_run_again(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        actor = await _started(nursery, tmp_path / "d.sqlite3")
        await actor.write(lambda c: c.execute("CREATE UNIQUE INDEX t_v ON t (v)"))
        await actor.write(_insert(-1))
        called: list[int] = []
        tables: list[frozenset[str]] = []
        actor.add_commit_listener(lambda info: tables.append(info.tables))
        gate = threading.Event()
        async with trio.open_nursery() as writers:
            writers.start_soon(actor.write, lambda conn: gate.wait(10))
            await trio.testing.wait_all_tasks_blocked()
            writers.start_soon(partial(actor.write, _insert(1), after_commit=called.append))
            writers.start_soon(_expect_rolled_back, actor, _sql("INSERT OR ROLLBACK INTO t (v) VALUES (-1)"))
            writers.start_soon(partial(actor.write, _insert(2), after_commit=called.append))
            await trio.testing.wait_all_tasks_blocked()
            tables.clear()
            gate.set()
        assert len(called) == 2 and len(set(called)) == 2  # once per committed op, with its rowid
        assert tables == [frozenset({"t"})]  # one commit, one notice
        actor.stop()


async def test_interrupted_write_keeps_its_own_error_and_the_others_commit(tmp_path: Path) -> None:
    # SQLite rolls the whole transaction back when a write is interrupted (a query's time limit).
    class TooSlow(Exception):
        pass

    async with trio.open_nursery() as nursery:
        actor = await _started(nursery, tmp_path / "d.sqlite3")

        def slow_insert(conn: DocConnection) -> None:
            conn.set_progress_handler(lambda: 1, 1)
            try:
                conn.execute(
                    "WITH RECURSIVE n(x) AS (SELECT 100 UNION ALL SELECT x + 1 FROM n WHERE x < 200) "
                    "INSERT INTO t (v) SELECT x FROM n"
                )
            except sqlite3.OperationalError:
                raise TooSlow("stopped") from None
            finally:
                conn.set_progress_handler(None, 0)

        outcomes = await _queued_batch(actor, [_insert(1), slow_insert, _insert(2)])
        assert await _values(actor) == [1, 2]
        assert isinstance(outcomes[1], TooSlow)
        actor.stop()


def _open_files(path: Path) -> int:
    """File descriptors this process has open on the document (its file, -wal and -shm)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(str(path))
    return count


async def test_connections_unused_for_a_while_are_closed_and_reopened_on_demand(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    path = tmp_path / "d.sqlite3"
    async with trio.open_nursery() as nursery:
        actor = await _started(nursery, path, connection_idle_seconds=30.0)
        await actor.write(_insert(1))
        assert await actor.read(lambda c: c.execute("SELECT v FROM t").fetchall()) == [(1,)]
        both = _open_files(path)  # the writer and a reader
        await trio.sleep(29)
        assert _open_files(path) == both
        await trio.sleep(2)  # both unused for 30 s now
        # the next op waits for the actor to finish closing them; it opens the writer alone again
        await actor.write(_insert(2))
        writer_only = _open_files(path)
        assert 0 < writer_only < both
        # nothing was lost with them, and a read opens a reader again
        assert await actor.read(lambda c: c.execute("SELECT v FROM t ORDER BY v").fetchall()) == [(1,), (2,)]
        assert _open_files(path) > writer_only  # (SQLite shares one -shm descriptor per file: not exactly `both`)
        actor.stop()
    assert _open_files(path) == 0
