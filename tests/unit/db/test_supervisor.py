from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from skald.config import Settings
from skald.db.supervisor import Supervisor
from skald.errors import DocumentNotFound, InvalidDocumentId


async def _supervisor(nursery: trio.Nursery, tmp_path: Path, **kwargs: Any) -> Supervisor:  # Settings fields
    sup = Supervisor(Settings(data_dir=tmp_path / "data", **kwargs))
    await nursery.start(sup.serve)
    return sup


async def test_idle_document_is_reaped_after_timeout(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        sup = await _supervisor(nursery, tmp_path, idle_timeout=60.0)
        await sup.create_document("a")
        async with sup.open_document("a") as actor:
            await actor.write(lambda c: c.execute("CREATE TABLE t (x)"))
        await trio.sleep(30)
        assert "a" in sup.open_actors
        await trio.sleep(60)
        assert actor.closing.is_set() and actor.stop_reason == "idle"
        await actor.stopped.wait()
        assert "a" not in sup.open_actors
        # it comes back on demand, with its data
        async with sup.open_document("a") as again:
            assert await again.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 0
        await sup.aclose()


async def test_held_document_is_not_reaped(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        sup = await _supervisor(nursery, tmp_path, idle_timeout=10.0)
        await sup.create_document("a")
        async with sup.open_document("a") as actor:
            await trio.sleep(1000)
            assert not actor.closing.is_set()
        await trio.sleep(20)
        assert actor.closing.is_set()
        await sup.aclose()


async def test_keep_alive_deadline_defers_reaping(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        sup = await _supervisor(nursery, tmp_path, idle_timeout=10.0)
        await sup.create_document("a")
        async with sup.open_document("a") as actor:
            actor.keep_alive_until(trio.current_time() + 100)
        await trio.sleep(90)
        assert not actor.closing.is_set()
        await trio.sleep(30)
        assert actor.closing.is_set()
        await sup.aclose()


async def test_unknown_and_invalid_documents(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        sup = await _supervisor(nursery, tmp_path)
        with pytest.raises(DocumentNotFound):
            async with sup.open_document("missing"):
                pass
        with pytest.raises(InvalidDocumentId):
            async with sup.open_document("../etc"):
                pass
        await sup.aclose()


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _task_count() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None  # None only outside trio.run
    return walk(root)


def _connection_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("skald-writer", "skald-reader", "skald-doc-"))]


async def test_open_and_reap_500_documents_leaves_nothing_behind(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        sup = await _supervisor(nursery, tmp_path, idle_timeout=3600.0, db_writer_threads=3, db_reader_threads=2)
        await trio.testing.wait_all_tasks_blocked()
        fds, tasks = _fd_count(), _task_count()
        peak = 0
        for i in range(500):
            db_id = f"doc-{i}"
            await sup.create_document(db_id)
            async with sup.open_document(db_id) as actor:
                await actor.write(lambda c: c.execute("CREATE TABLE IF NOT EXISTS t (x)"))
                await actor.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone())
            peak = max(peak, len(_connection_threads()))
        assert len(sup.open_actors) == 500
        # 1,000 connections open, and never more threads than the two pools' sizes
        assert _fd_count() > fds
        assert 0 < peak <= 3 + 2
        stopped = [sup.open_actors[d] for d in sup.reap_idle_now(min_idle=0)]
        assert len(stopped) == 500
        for actor in stopped:
            await actor.stopped.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert sup.open_actors == {}
        assert _fd_count() <= fds  # other tests' sockets may close meanwhile; a leak only adds
        assert _task_count() == tasks
        await sup.aclose()
    # the pools' threads end with the supervisor
    assert _connection_threads() == []


async def test_a_document_used_again_is_reaped_a_full_timeout_after_its_last_use(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with trio.open_nursery() as nursery:
        sup = await _supervisor(nursery, tmp_path, idle_timeout=60.0)
        actors = {}
        for db_id in ("a", "b"):
            await sup.create_document(db_id)
            async with sup.open_document(db_id) as actors[db_id]:
                await actors[db_id].write(lambda c: c.execute("CREATE TABLE t (x)"))
        await trio.sleep(50)
        async with sup.open_document("a") as a:  # lined up for t=60 already: used again at t=50
            await a.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone())
        await trio.sleep(15)  # t=65
        assert actors["b"].closing.is_set() and actors["b"].stop_reason == "idle"
        await trio.sleep(40)  # t=105: a's last use + 55 s
        assert not a.closing.is_set()
        await trio.sleep(10)  # t=115
        assert a.closing.is_set() and a.stop_reason == "idle"
        await sup.aclose()
