"""Writes through Hrana reach query watches, the change feed and the sandbox as /query writes do."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import aclosing
from typing import Any

import trio
from httpx_sse import aconnect_sse
from support.live import LiveServer
from support.sse import Event

DOC = "reach"
PIPELINE = f"/api/v1/db/{DOC}/libsql/v3/pipeline"


def execute(sql: str) -> dict[str, Any]:
    return {"type": "execute", "stmt": {"sql": sql}}


async def test_transaction_commit_reaches_watches_and_change_feed(server: LiveServer) -> None:
    async with server.client() as client:
        assert (await client.put(f"/api/v1/db/{DOC}")).status_code == 201
        r = await client.post(PIPELINE, json={"baton": None, "requests": [
            execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"), {"type": "close"}]})
        assert r.json()["results"][0]["type"] == "ok", r.json()
        snapshot = trio.Event()
        events: list[Event] = []

        def seen(so_far: list[Event]) -> bool:
            if so_far[0][0] == "snapshot":
                snapshot.set()
            return any(e[0] == "update" for e in so_far)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_post, server, seen, events)
            await snapshot.wait()
            r = await client.post(PIPELINE, json={"baton": None, "requests": [
                execute("BEGIN"),
                execute("CREATE TABLE later (x)"),  # DDL in the transaction: the change feed follows it
                execute("INSERT INTO t (v) VALUES ('one')"),
                execute("INSERT INTO later VALUES (42)"),
                execute("COMMIT"),
                {"type": "close"},
            ]})
            assert all(res["type"] == "ok" for res in r.json()["results"]), r.json()
        update = next(e for e in events if e[0] == "update")
        assert update[2]["rows"] == [[1]]
        changes = (await client.get(f"/api/v1/db/{DOC}/changes", params={"since": 0})).json()["changes"]
        rows = [(c["table"], c["op"], c.get("row")) for c in changes if c["op"] != "schema"]
        assert ("later", "schema") in [(c["table"], c["op"]) for c in changes]
        assert rows == [
            ("t", "insert", {"id": 1, "v": "one"}), ("later", "insert", {"x": 42})]


async def _watch_post(server: LiveServer, seen: Callable[[list[Event]], bool], events: list[Event]) -> None:
    async with server.client() as watcher, aconnect_sse(
        watcher, "POST", f"/api/v1/db/{DOC}/query/watch", json={"sql": "SELECT count(*) FROM t"}
    ) as source:
        with trio.CancelScope() as stop:
            async with aclosing(source.aiter_sse()) as sse_events:
                async for sse in sse_events:
                    events.append((sse.event, sse.id, json.loads(sse.data)))
                    if seen(events):
                        stop.cancel()


async def test_capability_tables_stay_guarded_inside_transactions(server: LiveServer) -> None:
    async with server.client() as client:
        assert (await client.put(f"/api/v1/db/{DOC}")).status_code == 201
        r = await client.post(PIPELINE, json={"baton": None, "requests": [
            execute("BEGIN"),
            execute("DELETE FROM _skald_changes"),
            execute("CREATE TABLE _skald_mine (x)"),
            execute("SAVEPOINT s"),
            execute("ATTACH DATABASE 'x.db' AS x"),
            {"type": "get_autocommit"},
            execute("ROLLBACK"),
            {"type": "get_autocommit"},
            {"type": "close"},
        ]})
        results = r.json()["results"]
        assert [res["error"]["code"] for res in results[1:5]] == ["STATEMENT_FORBIDDEN"] * 4, results
        assert results[5]["response"]["is_autocommit"] is False
        assert results[7]["response"]["is_autocommit"] is True
