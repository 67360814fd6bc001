from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from skald.actor import DocumentActor
from skald.connection import DocConnection
from skald.errors import MailboxFull, StorageError


def _insert(value: int):  # type: ignore[no-untyped-def]
    def op(conn: DocConnection) -> int:
        return int(conn.execute("INSERT INTO t (v) VALUES (?)", (value,)).lastrowid or 0)

    return op


async def _started(nursery: trio.Nursery, path: Path, **kwargs: object) -> DocumentActor:
    actor = DocumentActor("doc", path, **kwargs)  # type: ignore[arg-type]
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
