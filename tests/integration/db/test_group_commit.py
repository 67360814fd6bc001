"""Group commit over HTTP: a write that ends its transaction never takes its neighbours with it."""

from __future__ import annotations

import sqlite3
from typing import Any

import httpx
import trio
from support.live import LiveServer


async def _q(client: httpx.AsyncClient, sql: str, args: list[Any] | None = None) -> httpx.Response:
    return await client.post("/api/v1/db/d/query", json={"sql": sql, "args": args or []})


async def _mixed_rounds(server: LiveServer, rollback_sql: str, rounds: int = 3, each: int = 40) -> None:
    """``each`` plain INSERTs beside ``each`` statements that end the transaction, ``rounds`` times.

    Every INSERT answered 200 must be in the table; every other statement is a 409
    ``transaction_rolled_back`` problem.
    """
    token = await server.mint_token("d:query.write")
    acked: list[int] = []
    statuses: dict[int, int] = {}
    problems: list[dict[str, Any]] = []
    async with server.client(token, limits=httpx.Limits(max_connections=2 * each)) as c:

        async def insert(value: int) -> None:
            r = await _q(c, "INSERT INTO t (v) VALUES (?)", [value])
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 200:
                acked.append(value)

        async def roll_back() -> None:
            r = await _q(c, rollback_sql)
            assert r.headers["content-type"].startswith("application/problem+json"), r.text
            problems.append(r.json())

        for round_ in range(rounds):
            async with trio.open_nursery() as nursery:
                for i in range(each):
                    nursery.start_soon(insert, round_ * each + i)
                    nursery.start_soon(roll_back)
        r = await _q(c, "SELECT v FROM t WHERE typeof(v) = 'integer' ORDER BY v")
        present = [row[0] for row in r.json()["rows"]]
    missing = sorted(set(acked) - set(present))
    print(f"{len(acked)} INSERTs acknowledged, {len(missing)} of them missing; statuses {statuses}")
    assert missing == []
    assert sorted(present) == sorted(acked)
    assert len(acked) == rounds * each  # a plain INSERT has no reason to fail
    assert len(problems) == rounds * each
    assert {(p["status"], p["code"]) for p in problems} == {(409, "transaction_rolled_back")}


async def _setup(server: LiveServer, *ddl: str) -> None:
    async with server.client() as c:
        assert (await c.put("/api/v1/db/d")).status_code == 201
        for sql in ("CREATE TABLE t (id INTEGER PRIMARY KEY, v NOT NULL UNIQUE)", *ddl):
            r = await _q(c, sql)
            assert r.status_code == 200, r.text


async def test_insert_or_rollback_never_drops_acknowledged_inserts(server: LiveServer) -> None:
    await _setup(server, "INSERT INTO t (v) VALUES ('dup')")
    await _mixed_rounds(server, "INSERT OR ROLLBACK INTO t (v) VALUES ('dup')")


async def test_trigger_raise_rollback_never_drops_acknowledged_inserts(server: LiveServer) -> None:
    await _setup(
        server,
        "CREATE TABLE audit (note TEXT)",
        "CREATE TRIGGER no_notes BEFORE INSERT ON audit BEGIN SELECT RAISE(ROLLBACK, 'no notes today'); END",
    )
    await _mixed_rounds(server, "INSERT INTO audit (note) VALUES ('hello')")


async def test_rolled_back_write_explains_itself(server: LiveServer) -> None:
    await _setup(server, "INSERT INTO t (v) VALUES ('dup')")
    async with server.client() as c:
        r = await _q(c, "INSERT OR ROLLBACK INTO t (v) VALUES ('dup')")
    assert r.status_code == 409
    body = r.json()
    assert body["code"] == "transaction_rolled_back"
    assert "UNIQUE constraint failed" in body["detail"]


async def test_publishes_webhooks_and_fenced_writes_beside_rollbacks_are_all_kept(server: LiveServer) -> None:
    # Every kind of write op shares the document's group commits with the statement that rolls back.
    await _setup(server, "INSERT INTO t (v) VALUES ('dup')")
    async with server.client(limits=httpx.Limits(max_connections=100)) as c:
        lease = (await c.post("/api/v1/db/d/leases/acquire", json={"resource": "job", "owner": "w"})).json()
        published: list[int] = []
        delivered: list[int] = []
        fenced: list[int] = []
        rolled_back: list[int] = []

        async def publish(i: int) -> None:
            r = await c.post("/api/v1/db/d/messages", json={"topic": "t", "payload": {"i": i}})
            assert r.status_code == 201, r.text
            published.append(r.json()["id"])

        async def deliver(i: int) -> None:
            r = await c.post("/api/v1/db/d/webhooks/hook", json={"i": i}, headers={"X-Request-Id": f"d{i}"})
            assert r.status_code == 201, r.text
            delivered.append(r.json()["id"])

        async def fenced_insert(i: int) -> None:
            fence = {"resource": "job", "token": lease["fence"]}
            body = {"sql": "INSERT INTO t (v) VALUES (?)", "args": [i], "fence": fence}
            r = await c.post("/api/v1/db/d/query", json=body)
            assert r.status_code == 200, r.text
            fenced.append(i)

        async def roll_back() -> None:
            r = await _q(c, "INSERT OR ROLLBACK INTO t (v) VALUES ('dup')")
            rolled_back.append(r.status_code)

        for round_ in range(3):
            async with trio.open_nursery() as nursery:
                for i in range(round_ * 15, round_ * 15 + 15):
                    nursery.start_soon(publish, i)
                    nursery.start_soon(deliver, i)
                    nursery.start_soon(fenced_insert, i)
                    nursery.start_soon(roll_back)
                    nursery.start_soon(roll_back)
        messages = (await c.get("/api/v1/db/d/messages", params={"since_id": 0, "limit": 1000})).json()["messages"]
        rows = (await _q(c, "SELECT v FROM t WHERE typeof(v) = 'integer'")).json()["rows"]
    inbox = _inbox_ids(server)
    print(
        f"missing: {len(set(published) - {m['id'] for m in messages})} of {len(published)} publishes, "
        f"{len(set(delivered) - inbox)} of {len(delivered)} webhook deliveries, "
        f"{len(set(fenced) - {r[0] for r in rows})} of {len(fenced)} fenced writes"
    )
    assert sorted(m["id"] for m in messages) == sorted(published)
    assert inbox == set(delivered)
    assert sorted(r[0] for r in rows) == sorted(fenced)
    assert rolled_back == [409] * 90


def _inbox_ids(server: LiveServer) -> set[int]:
    conn = sqlite3.connect(server.settings.document_path("d"))
    try:
        return {row[0] for row in conn.execute("SELECT id FROM webhook_inbox")}
    finally:
        conn.close()


async def test_batch_that_rolls_back_names_its_statement_and_keeps_nothing(server: LiveServer) -> None:
    await _setup(server, "INSERT INTO t (v) VALUES ('dup')")
    async with server.client() as c:
        body = {
            "statements": [
                {"sql": "INSERT INTO t (v) VALUES (1)"},
                {"sql": "INSERT OR ROLLBACK INTO t (v) VALUES ('dup')"},
                {"sql": "INSERT INTO t (v) VALUES (2)"},
            ]
        }
        r = await c.post("/api/v1/db/d/query/batch", json=body)
        assert r.status_code == 409, r.text
        problem = r.json()
        assert problem["code"] == "transaction_rolled_back"
        assert problem["statement_index"] == 1
        assert problem["sqlite_error"] == "SQLITE_CONSTRAINT_UNIQUE"
        rows = (await _q(c, "SELECT v FROM t ORDER BY v")).json()["rows"]
    assert rows == [["dup"]]  # all or nothing: the batch's first INSERT is not kept either
