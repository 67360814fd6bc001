"""/query and /query/batch over HTTP: results, JSON mapping, scopes, errors, bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio
from support.live import LiveServer, make_settings, start_live_server


async def _q(
    client: httpx.AsyncClient, sql: str, args: Any = None, db: str = "d", **opts: Any
) -> httpx.Response:
    body: dict[str, Any] = {"sql": sql}
    if args is not None:
        body["args"] = args
    if opts:
        body["options"] = opts
    return await client.post(f"/api/v1/db/{db}/query", json=body)


async def test_query_read_write_and_shape(server: LiveServer) -> None:
    async with server.client() as c:
        assert (await c.put("/api/v1/db/d")).status_code == 201
        r = await _q(c, "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, data BLOB, big INTEGER, f REAL)")
        assert r.status_code == 200, r.text
        r = await _q(
            c,
            "INSERT INTO t(name, data, big, f) VALUES (?, ?, ?, ?)",
            ["a", {"$base64": "AAEC/w=="}, {"$int": "9223372036854775807"}, 1.5],
        )
        body = r.json()
        assert r.status_code == 200, body
        assert body["changes"] == 1 and body["last_insert_rowid"] == 1
        assert set(body) == {
            "columns",
            "rows",
            "row_count",
            "truncated",
            "changes",
            "last_insert_rowid",
            "duration_ms",
        }
        r = await _q(
            c,
            "SELECT id, name, data, big, f, NULL AS n, 9007199254740991 AS safe FROM t WHERE name = :n",
            {"n": "a"},
        )
        body = r.json()
        assert body["columns"] == ["id", "name", "data", "big", "f", "n", "safe"]
        assert body["rows"] == [
            [1, "a", {"$base64": "AAEC/w=="}, {"$int": "9223372036854775807"}, 1.5, None, 9007199254740991]
        ]
        assert body["row_count"] == 1 and body["truncated"] is False
        assert body["changes"] == 0 and body["last_insert_rowid"] is None
        # a big plain JSON integer binds too, and comes back as {"$int"}
        r = await _q(c, "SELECT ? + 0 AS v", [9007199254740993])
        assert r.json()["rows"] == [[{"$int": "9007199254740993"}]]
        r = await _q(c, "SELECT 1e999 AS inf")
        assert r.json()["rows"] == [[{"$float": "Infinity"}]]
        r = await _q(c, "INSERT INTO t(name) VALUES ('b') RETURNING id, name")
        assert r.json()["rows"] == [[2, "b"]] and r.json()["changes"] == 1


async def test_errors_are_problem_json(server: LiveServer) -> None:
    async with server.client() as c:
        await c.put("/api/v1/db/d")
        await _q(c, "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT UNIQUE)")
        cases: list[tuple[tuple[str] | tuple[str, list[Any]], int, str]] = [
            (("SELECT 1; SELECT 2",), 400, "multiple_statements"),
            (("   ",), 400, "empty_statement"),
            (("SELEC 1",), 400, "sql_error"),
            (("SELECT * FROM nope",), 400, "sql_error"),
            (("SELECT ?", [float("nan")]), 400, "invalid_json"),  # NaN is not JSON: the body decoder refuses it
            (("SELECT ?", [[1, 2]]), 400, "invalid_argument"),
            (("SELECT ?", [{"$base64": "!!"}]), 400, "invalid_argument"),
            (("SELECT ?", [2**64]), 400, "invalid_argument"),
            (("SELECT ?, ?", [1]), 400, "invalid_argument"),
            (("ATTACH '/tmp/x.db' AS x",), 403, "statement_forbidden"),
            (("PRAGMA journal_mode=DELETE",), 403, "statement_forbidden"),
            (("DELETE FROM _skald_meta",), 403, "statement_forbidden"),
            (("VACUUM INTO '/tmp/copy.db'",), 403, "statement_forbidden"),
        ]
        for args, status, code in cases:
            if len(args) == 2:
                r = await c.post(
                    "/api/v1/db/d/query",
                    content=_json(args[0], args[1]),
                    headers={"content-type": "application/json"},
                )
            else:
                r = await _q(c, args[0])
            assert r.status_code == status, (args, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == code, (args, r.json())
        # the authorizer does not see the new name of a rename: checked after the statement
        r = await _q(c, "ALTER TABLE t RENAME TO _skald_mine")
        assert r.status_code == 403 and r.json()["code"] == "statement_forbidden"
        assert (await _q(c, "SELECT count(*) FROM t")).status_code == 200
        r = await _q(c, "ALTER TABLE t RENAME TO t2")
        assert r.status_code == 200
        r = await _q(c, "ALTER TABLE t2 RENAME TO t")
        assert r.status_code == 200
        await _q(c, "INSERT INTO t(name) VALUES ('x')")
        r = await _q(c, "INSERT INTO t(name) VALUES ('x')")
        assert r.status_code == 409 and r.json()["code"] == "constraint_violation"
        r = await _q(c, "SELECT 1", db="missing")
        assert r.status_code == 404
        r = await c.post("/api/v1/db/d/query", json={"args": []})
        assert r.status_code == 400


def _json(sql: str, args: list[Any]) -> str:
    import json

    return json.dumps({"sql": sql, "args": args})  # allows NaN, like a careless client


async def test_scopes_over_http(server: LiveServer) -> None:
    async with server.client() as c:
        await c.put("/api/v1/db/d")
        await _q(c, "CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    reader = await server.mint_token("d:query.read")
    writer = await server.mint_token("d:query.read", "d:query.write")
    nobody = await server.mint_token("d:pub.publish")
    async with server.client(reader) as c:
        assert (await _q(c, "SELECT * FROM t")).status_code == 200
        for sql in [
            "INSERT INTO t(v) VALUES (1)",
            "WITH x AS (SELECT 1) DELETE FROM t",
            "REPLACE INTO t VALUES (1, 1)",
            "CREATE TABLE z(a)",
        ]:
            r = await _q(c, sql)
            assert r.status_code == 403 and r.json()["code"] == "scope_denied", sql
        r = await c.post(
            "/api/v1/db/d/query/batch",
            json={"statements": [{"sql": "SELECT 1"}, {"sql": "UPDATE t SET v = 2"}]},
        )
        assert r.status_code == 403 and r.json()["code"] == "scope_denied"
    async with server.client(writer) as c:
        r = await _q(c, "INSERT INTO t(v) VALUES (1)")
        assert r.status_code == 200, r.text
        r = await _q(c, "CREATE TABLE z(a)")
        assert r.status_code == 403 and r.json()["code"] == "scope_denied"
    async with server.client(nobody) as c:
        assert (await _q(c, "SELECT 1")).status_code == 403
    async with server.client() as c:
        assert (await _q(c, "SELECT count(*) FROM t")).json()["rows"] == [[1]]


async def test_batch_all_or_nothing(server: LiveServer) -> None:
    async with server.client() as c:
        await c.put("/api/v1/db/d")
        await _q(c, "CREATE TABLE t(id INTEGER PRIMARY KEY, v UNIQUE)")
        r = await c.post(
            "/api/v1/db/d/query/batch",
            json={
                "statements": [
                    {"sql": "INSERT INTO t(v) VALUES (?)", "args": [1]},
                    {"sql": "INSERT INTO t(v) VALUES (:v) RETURNING id", "args": {"v": 2}},
                    {"sql": "SELECT v FROM t ORDER BY v"},
                ]
            },
        )
        body = r.json()
        assert r.status_code == 200, body
        assert [x["changes"] for x in body["results"]] == [1, 1, 0]
        assert body["results"][1]["rows"] == [[2]]
        assert body["results"][2]["rows"] == [[1], [2]]
        r = await c.post(
            "/api/v1/db/d/query/batch",
            json={
                "statements": [
                    {"sql": "INSERT INTO t(v) VALUES (3)"},
                    {"sql": "INSERT INTO t(v) VALUES (1)"},
                ]
            },
        )
        assert r.status_code == 409 and r.json()["statement_index"] == 1
        assert (await _q(c, "SELECT v FROM t ORDER BY v")).json()["rows"] == [[1], [2]]
        r = await c.post(
            "/api/v1/db/d/query/batch",
            json={"statements": [{"sql": "SELECT 1"}, {"sql": "SELECT 1; SELECT 2"}]},
        )
        assert r.status_code == 400 and r.json()["code"] == "multiple_statements"
        assert r.json()["statement_index"] == 1
        r = await c.post(
            "/api/v1/db/d/query/batch",
            json={"statements": [{"sql": "SELECT count(*) FROM t"}, {"sql": "SELECT max(v) FROM t"}]},
        )
        assert [x["rows"] for x in r.json()["results"]] == [[[2]], [[2]]]


async def test_batch_ddl_then_use(server: LiveServer) -> None:
    """A batch may use what its own DDL creates; runtime enforcement still refuses the forbidden."""
    batch = {
        "statements": [
            {"sql": "CREATE TABLE n(a)"},
            {"sql": "INSERT INTO n VALUES (1)"},
            {"sql": "SELECT a FROM n"},
        ]
    }
    writer = await server.mint_token("d:query.write")
    async with server.client() as c, server.client(writer) as w:
        await c.put("/api/v1/db/d")
        r = await w.post("/api/v1/db/d/query/batch", json=batch)
        assert r.status_code == 403 and r.json()["code"] == "scope_denied"
        r = await c.post("/api/v1/db/d/query/batch", json=batch)
        assert r.status_code == 200, r.text
        assert r.json()["results"][2]["rows"] == [[1]]
        sneaky = {
            "statements": [
                {"sql": "CREATE TABLE m(a)"},
                {"sql": "CREATE TRIGGER m_t AFTER INSERT ON m BEGIN DELETE FROM _skald_meta; END"},
                {"sql": "INSERT INTO m VALUES (1)"},
            ]
        }
        r = await c.post("/api/v1/db/d/query/batch", json=sneaky)
        assert r.status_code == 403 and r.json()["code"] == "statement_forbidden"
        assert r.json()["statement_index"] == 2
        r = await _q(c, "SELECT count(*) FROM _skald_meta")
        assert r.json()["rows"][0][0] > 0
        r = await _q(c, "SELECT count(*) FROM sqlite_master WHERE name IN ('m', 'm_t')")
        assert r.json()["rows"] == [[0]]  # all or nothing


async def test_row_and_byte_caps(tmp_path: Path, nursery: trio.Nursery) -> None:
    live = await start_live_server(
        nursery, make_settings(tmp_path / "data", query_max_rows=50, query_max_bytes=2000)
    )
    try:
        async with live.client() as c:
            await c.put("/api/v1/db/d")
            seq = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100) "
            r = (await _q(c, seq + "SELECT x FROM c")).json()
            assert r["row_count"] == 50 and r["truncated"] is True and r["rows"][-1] == [50]
            r = (await _q(c, seq + "SELECT x FROM c", max_rows=10)).json()
            assert r["row_count"] == 10 and r["truncated"] is True
            r = (await _q(c, seq + "SELECT x FROM c", max_rows=500)).json()
            assert r["row_count"] == 50  # a request can lower the cap, never raise it
            r = (await _q(c, seq + "SELECT x FROM c WHERE x <= 5")).json()
            assert r["row_count"] == 5 and r["truncated"] is False
            r = (await _q(c, seq + "SELECT printf('%.200c', 'x') FROM c")).json()
            assert r["truncated"] is True and 0 < r["row_count"] < 10
            # a single value cannot grow past query_max_value_bytes (16 MiB): no memory bombs
            r = await _q(c, "SELECT length(randomblob(100000000))")
            assert r.status_code == 400 and r.json()["code"] == "value_too_large"
            assert r.json()["max_value_bytes"] == 16 * 1024 * 1024
    finally:
        await live.stop()


RUNAWAY = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


async def test_runaway_query_stopped_while_others_answer(tmp_path: Path, nursery: trio.Nursery) -> None:
    live = await start_live_server(nursery, make_settings(tmp_path / "data", query_timeout_ms=3000))
    try:
        async with live.client() as c:
            for db in ("slow", "other"):
                await c.put(f"/api/v1/db/{db}")
                await _q(c, "CREATE TABLE t(v)", db=db)
            finished = trio.Event()
            box: list[httpx.Response] = []

            async def runaway() -> None:
                box.append(await _q(c, RUNAWAY, db="slow"))
                finished.set()

            nursery.start_soon(runaway)
            actor = None
            with trio.fail_after(10):
                while actor is None or actor.inflight == 0:
                    actor = live.state.supervisor.open_actors.get("slow")
                    await trio.sleep(0.01)
            # the runaway read is running now: others keep answering
            assert (await c.get("/healthz")).status_code == 200
            assert (await _q(c, "INSERT INTO t VALUES (1)", db="other")).status_code == 200
            assert (await _q(c, "SELECT count(*) FROM t", db="other")).json()["rows"] == [[1]]
            assert (await _q(c, "INSERT INTO t VALUES (1)", db="slow")).status_code == 200
            assert not finished.is_set()
            await finished.wait()
            r = box[0]
            assert r.status_code == 400 and r.json()["code"] == "query_timeout"
            # a request may lower the limit
            r = await _q(c, RUNAWAY, db="slow", timeout_ms=100)
            assert r.json()["code"] == "query_timeout" and r.json()["timeout_ms"] == 100
            # a runaway write is stopped too, and rolled back
            r = await _q(c, "INSERT INTO t " + RUNAWAY.replace("count(*)", "x"), db="other", timeout_ms=200)
            assert r.json()["code"] == "query_timeout"
            assert (await _q(c, "SELECT count(*) FROM t", db="other")).json()["rows"] == [[1]]
    finally:
        await live.stop()


async def test_openapi_and_metrics(server: LiveServer) -> None:
    async with server.client() as c:
        spec = (await c.get("/openapi.json")).json()
        await c.put("/api/v1/db/d")
        assert (await _q(c, "SELECT 1")).status_code == 200
        metrics = (await c.get("/metrics")).text
    assert 'skald_query_duration_seconds_count{kind="read"} 1.0' in metrics
    assert "skald_query_watches 0.0" in metrics
    assert "/api/v1/db/{db_id}/query" in spec["paths"]
    assert "/api/v1/db/{db_id}/query/watch" in spec["paths"]
