"""/query/watch over SSE: snapshot, updates only on relevant commits, coalescing, stable hashes."""

from __future__ import annotations

import json
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from httpx_sse import ServerSentEvent, aconnect_sse
from support.live import LiveServer, make_settings, start_live_server

from skald.db.connection import DocConnection

# Leaving an SSE stream early leaves httpx/httpcore's inner async generators to the
# garbage collector (aclosing() closes only the outer one); that is the client's
# bookkeeping, not a leak in skald, which the hold-release assertions check.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <async_generator object "
    r"(AsyncHTTP11Connection|AsyncResponseStream|BoundAsyncStream|HTTP11ConnectionByteStream|PoolByteStream"
    r"|Response)\.:pytest.PytestUnraisableExceptionWarning"
)


async def _setup(client: httpx.AsyncClient, db: str = "d") -> None:
    assert (await client.put(f"/api/v1/db/{db}")).status_code in (200, 201)
    for sql in ["CREATE TABLE IF NOT EXISTS a(id INTEGER PRIMARY KEY, v)", "CREATE TABLE IF NOT EXISTS b(v)"]:
        r = await client.post(f"/api/v1/db/{db}/query", json={"sql": sql})
        assert r.status_code == 200, r.text


def _watch_body(sql: str, heartbeat: float = 0.2, **options: Any) -> dict[str, Any]:
    return {"sql": sql, "options": {"heartbeat_seconds": heartbeat, **options}}


async def _insert(client: httpx.AsyncClient, table: str, value: Any, db: str = "d") -> None:
    r = await client.post(
        f"/api/v1/db/{db}/query", json={"sql": f"INSERT INTO {table}(v) VALUES (?)", "args": [value]}
    )
    assert r.status_code == 200, r.text


def _data(event: ServerSentEvent) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(event.data)
    return data


async def test_snapshot_then_update_only_for_tables_read(server: LiveServer) -> None:
    async with server.client() as c, server.client() as w:
        await _setup(c)
        await _insert(w, "a", 1)
        body = _watch_body("SELECT id, v FROM a ORDER BY id")
        async with aconnect_sse(c, "POST", "/api/v1/db/d/query/watch", json=body) as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            assert source.response.headers["cache-control"] == "no-store"
            async with aclosing(source.aiter_sse()) as events:
                first = await anext(events)
                assert first.event == "snapshot"
                snap = _data(first)
                assert snap["columns"] == ["id", "v"] and snap["rows"] == [[1, 1]]
                assert len(snap["result_hash"]) == 64 and first.id == snap["result_hash"]
                # writes to a table the query does not read: only heartbeats
                await _insert(w, "b", "x")
                await _insert(w, "b", "y")
                for _ in range(2):
                    assert (await anext(events)).event == "heartbeat"
                await _insert(w, "a", 2)
                event = await anext(events)
                while event.event == "heartbeat":
                    event = await anext(events)
                assert event.event == "update"
                assert _data(event)["rows"] == [[1, 1], [2, 2]]
                assert _data(event)["result_hash"] != snap["result_hash"]
                # an UPDATE that leaves the result as it was sends no update
                r = await w.post("/api/v1/db/d/query", json={"sql": "UPDATE a SET v = v"})
                assert r.status_code == 200
                await _insert(w, "a", 3)
                event = await anext(events)
                while event.event == "heartbeat":
                    event = await anext(events)
                assert event.event == "update" and _data(event)["rows"][-1] == [3, 3]
        # the client left: the watch released its hold on the document
        actor = server.state.supervisor.open_actors["d"]
        with trio.fail_after(5):
            while actor.holds:  # noqa: ASYNC110 - bounded poll of a plain counter
                await trio.sleep(0.01)


async def test_watch_refuses_writes_and_needs_query_read(server: LiveServer) -> None:
    async with server.client() as c:
        await _setup(c)
        r = await c.post("/api/v1/db/d/query/watch", json={"sql": "DELETE FROM a"})
        assert r.status_code == 400 and r.json()["code"] == "not_read_only"
        r = await c.post("/api/v1/db/d/query/watch", json={"sql": "SELECT 1; SELECT 2"})
        assert r.status_code == 400 and r.json()["code"] == "multiple_statements"
    token = await server.mint_token("d:pub.publish")
    async with server.client(token) as c:
        r = await c.post("/api/v1/db/d/query/watch", json={"sql": "SELECT 1"})
        assert r.status_code == 403


async def test_coalescing_under_rapid_writes(server: LiveServer, nursery: trio.Nursery) -> None:
    writes = 1000
    async with server.client() as c:
        await _setup(c)
        body = _watch_body("SELECT count(*), max(v) FROM a", heartbeat=5)
        updates: list[dict[str, Any]] = []
        async with (
            aconnect_sse(c, "POST", "/api/v1/db/d/query/watch", json=body) as source,
            aclosing(source.aiter_sse()) as events,
        ):
            assert (await anext(events)).event == "snapshot"
            async with server.state.supervisor.open_document("d") as actor:

                async def write(value: int) -> None:
                    def op(conn: DocConnection) -> None:
                        conn.execute("INSERT INTO a(v) VALUES (?)", (value,))

                    await actor.write(op)

                for burst in range(writes // 50):
                    async with trio.open_nursery() as burst_nursery:
                        for i in range(50):
                            burst_nursery.start_soon(write, burst * 50 + i + 1)
                commits = actor.commits
            with trio.fail_after(20):
                async for event in events:
                    if event.event == "update":
                        updates.append(_data(event))
                        if updates[-1]["rows"] == [[writes, writes]]:
                            break
        assert updates[-1]["rows"] == [[writes, writes]]
        print("coalescing:", len(updates), "updates for", writes, "writes in", commits, "commits")
        assert len(updates) <= commits
        assert len(updates) < writes // 10, (len(updates), commits)


async def test_hash_stable_across_restart_and_unchanged(tmp_path: Path, nursery: trio.Nursery) -> None:
    data_dir = tmp_path / "data"
    sql = "SELECT id, v, x'00ff' AS blob, 1.25 AS f, NULL AS n FROM a ORDER BY id"
    hashes = []
    for round_ in range(2):
        live = await start_live_server(nursery, make_settings(data_dir))
        async with live.client() as c:
            if round_ == 0:
                await _setup(c)
                await _insert(c, "a", "hello ✓")
                await _insert(c, "a", 9007199254740993)
            async with (
                aconnect_sse(c, "POST", "/api/v1/db/d/query/watch", json=_watch_body(sql)) as source,
                aclosing(source.aiter_sse()) as events,
            ):
                first = await anext(events)
                assert first.event == "snapshot"
                hashes.append(_data(first)["result_hash"])
                if round_ == 1:
                    # the server stopping ends the stream (no hang on graceful shutdown)
                    async with trio.open_nursery() as stopper:
                        stopper.start_soon(live.stop)
                        with trio.fail_after(10):
                            async for _event in events:
                                pass
        if round_ == 0:
            await live.stop()
    assert hashes[0] == hashes[1]
    live = await start_live_server(nursery, make_settings(data_dir))
    async with live.client() as c:
        body = _watch_body(sql, result_hash=hashes[0])
        async with (
            aconnect_sse(c, "POST", "/api/v1/db/d/query/watch", json=body) as source,
            aclosing(source.aiter_sse()) as events,
        ):
            first = await anext(events)
            assert first.event == "unchanged" and _data(first) == {"result_hash": hashes[0]}
        # Last-Event-ID works the same way
        headers = {"Last-Event-ID": hashes[0]}
        async with (
            aconnect_sse(c, "POST", "/api/v1/db/d/query/watch", json=_watch_body(sql), headers=headers) as s,
            aclosing(s.aiter_sse()) as events,
        ):
            assert (await anext(events)).event == "unchanged"
    await live.stop()


async def test_identical_watches_all_get_the_update(server: LiveServer, nursery: trio.Nursery) -> None:
    """Watches of one query share evaluations; each still sees every change."""
    async with server.client() as c, server.client() as w:
        await _setup(c)
        got: list[list[Any]] = []
        snapshots = trio.Semaphore(0)

        async def watch() -> None:
            body = _watch_body("SELECT count(*) FROM a", heartbeat=30)
            async with (
                aconnect_sse(c, "POST", "/api/v1/db/d/query/watch", json=body) as source,
                aclosing(source.aiter_sse()) as events,
            ):
                assert _data(await anext(events))["rows"] == [[0]]
                snapshots.release()
                event = await anext(events)
                assert event.event == "update"
                got.append(_data(event)["rows"])

        async with trio.open_nursery() as watchers:
            for _ in range(5):
                watchers.start_soon(watch)
            for _ in range(5):
                await snapshots.acquire()
            await _insert(w, "a", 1)
        assert got == [[[1]]] * 5
        hub = server.state.query_watch_hub
        with trio.fail_after(5):  # the server notices the disconnects shortly after
            while hub._runs:  # noqa: ASYNC110 - bounded poll of a plain dict
                await trio.sleep(0.01)


async def test_failing_watch_sends_error_and_stays_open(server: LiveServer) -> None:
    async with server.client() as c, server.client() as w:
        await _setup(c)
        await _insert(w, "a", 1)
        body = _watch_body("SELECT v FROM a", heartbeat=30)
        async with (
            aconnect_sse(c, "POST", "/api/v1/db/d/query/watch", json=body) as source,
            aclosing(source.aiter_sse()) as events,
        ):
            assert _data(await anext(events))["rows"] == [[1]]
            r = await w.post("/api/v1/db/d/query", json={"sql": "DROP TABLE a"})
            assert r.status_code == 200, r.text
            event = await anext(events)
            assert event.event == "error"
            assert _data(event)["code"] == "sql_error" and "no such table" in _data(event)["detail"]
            r = await w.post("/api/v1/db/d/query", json={"sql": "CREATE TABLE a(id INTEGER PRIMARY KEY, v)"})
            assert r.status_code == 200
            event = await anext(events)
            assert event.event == "update" and _data(event)["rows"] == []
            await _insert(w, "a", 5)
            event = await anext(events)
            assert event.event == "update" and _data(event)["rows"] == [[5]]


async def test_watch_ends_when_document_is_deleted(server: LiveServer) -> None:
    async with server.client() as c, server.client() as admin:
        await _setup(c)
        body = _watch_body("SELECT count(*) FROM a", heartbeat=30)
        async with (
            aconnect_sse(c, "POST", "/api/v1/db/d/query/watch", json=body) as source,
            aclosing(source.aiter_sse()) as events,
        ):
            assert (await anext(events)).event == "snapshot"
            assert (await admin.delete("/api/v1/db/d")).status_code == 204
            with trio.fail_after(10):
                rest = [event.event async for event in events]
            assert "update" not in rest
