"""Group commit over HTTP: a write that ends its transaction never takes its neighbours with it."""

from __future__ import annotations

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
