"""The actor lends its writer to one interactive transaction; the deadline takes it back."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from skald.db.actor import CommitInfo, DocumentActor, LoanEnded
from skald.db.connection import DocConnection
from skald.errors import DocumentUnavailable


async def _actor(nursery: trio.Nursery, path: Path) -> DocumentActor:
    actor = DocumentActor("doc", path)
    await nursery.start(actor.serve)
    await actor.write(lambda c: c.execute("CREATE TABLE t (v INTEGER)"))
    return actor


def _count(conn: DocConnection) -> int:
    return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])


async def test_writes_queue_behind_a_loan_and_its_commit_reaches_listeners(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        actor = await _actor(nursery, tmp_path / "d.sqlite3")
        commits: list[CommitInfo] = []
        actor.add_commit_listener(commits.append)
        loan = await actor.lend_writer(60)
        await loan.run(lambda c: c.execute("BEGIN IMMEDIATE"), statement=False)
        await loan.run(lambda c: c.execute("INSERT INTO t VALUES (1)"))
        queued = trio.Event()

        async def other_writer() -> None:
            await actor.write(lambda c: c.execute("INSERT INTO t VALUES (2)"))
            queued.set()

        nursery.start_soon(other_writer)
        await trio.testing.wait_all_tasks_blocked()
        assert not queued.is_set()  # the writer is lent: the other write waits its turn
        assert await actor.read(_count) == 0  # nothing committed yet
        await loan.run(lambda c: c.execute("COMMIT"), statement=False)
        await queued.wait()
        assert not loan.active
        assert await actor.read(_count) == 2
        assert [info.tables for info in commits] == [frozenset({"t"}), frozenset({"t"})]
        actor.stop()


async def test_deadline_rolls_back_and_frees_the_writer(tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        actor = await _actor(nursery, tmp_path / "d.sqlite3")
        loan = await actor.lend_writer(5)
        await loan.run(lambda c: c.execute("BEGIN IMMEDIATE"), statement=False)
        await loan.run(lambda c: c.execute("INSERT INTO t VALUES (1)"))
        done = trio.Event()

        async def other_writer() -> None:
            await actor.write(lambda c: c.execute("INSERT INTO t VALUES (2)"))
            done.set()

        nursery.start_soon(other_writer)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        mock_clock.jump(5)  # time only moves here: the loan's deadline passes
        await done.wait()
        assert loan.end_reason == "timeout"
        with pytest.raises(LoanEnded):
            await loan.run(lambda c: c.execute("COMMIT"), statement=False)
        assert await actor.read(lambda c: [r[0] for r in c.execute("SELECT v FROM t")]) == [2]
        actor.stop()


async def test_a_failing_statement_undoes_itself_alone(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        actor = await _actor(nursery, tmp_path / "d.sqlite3")
        await actor.write(lambda c: c.execute("CREATE UNIQUE INDEX u ON t (v)"))
        loan = await actor.lend_writer(60)
        await loan.run(lambda c: c.execute("BEGIN IMMEDIATE"), statement=False)
        await loan.run(lambda c: c.execute("INSERT INTO t VALUES (1)"))
        with pytest.raises(Exception, match="UNIQUE"):
            await loan.run(lambda c: c.execute("INSERT INTO t VALUES (3), (1)"))
        assert loan.active  # the transaction survives a failed statement, as in SQLite
        await loan.run(lambda c: c.execute("COMMIT"), statement=False)
        assert await actor.read(lambda c: [r[0] for r in c.execute("SELECT v FROM t")]) == [1]
        actor.stop()


async def test_stopping_the_actor_ends_the_loan(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        actor = await _actor(nursery, tmp_path / "d.sqlite3")
        loan = await actor.lend_writer(600)
        await loan.run(lambda c: c.execute("BEGIN IMMEDIATE"), statement=False)
        await loan.run(lambda c: c.execute("INSERT INTO t VALUES (1)"))
        actor.stop()
        await actor.stopped.wait()
        assert loan.end_reason == "closing"
    actor = DocumentActor("doc", tmp_path / "d.sqlite3")
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.serve)
        assert await actor.read(_count) == 0
        actor.stop()


async def test_a_lent_commit_passes_the_commit_gate_before_it_is_acknowledged(tmp_path: Path) -> None:
    """In a cluster the gate refuses to acknowledge a commit on a node that lost the document."""
    async with trio.open_nursery() as nursery:
        actor = await _actor(nursery, tmp_path / "d.sqlite3")
        gated: list[str] = []

        async def gate(gated_actor: DocumentActor) -> None:
            gated.append(gated_actor.db_id)
            raise DocumentUnavailable("this node no longer owns doc")

        actor.commit_gate = gate
        loan = await actor.lend_writer(60)
        await loan.run(lambda c: c.execute("BEGIN IMMEDIATE"), statement=False)
        await loan.run(lambda c: c.execute("INSERT INTO t VALUES (1)"))
        await loan.run(lambda c: c.execute("COMMIT"), statement=False)
        with pytest.raises(DocumentUnavailable):
            await loan.confirm_commit()
        assert gated == ["doc"]
        actor.stop()
