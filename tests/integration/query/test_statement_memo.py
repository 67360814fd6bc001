"""Remembered statement classes (issue 17): a repeated SQL text skips classification, never its checks.

skald remembers the class of each SQL text per document until the document's schema changes.
These tests change what the *same* text compiles to between two runs and check that the
second run is judged by the new schema: a stale class would refuse a statement its token
may run, or run one its token may not.
"""

from __future__ import annotations

from typing import Any

import httpx
from support.live import LiveServer

INSERT = "INSERT INTO t(v) VALUES (?)"


async def _q(c: httpx.AsyncClient, sql: str, args: Any = None) -> httpx.Response:
    body: dict[str, Any] = {"sql": sql}
    if args is not None:
        body["args"] = args
    return await c.post("/api/v1/db/d/query", json=body)


async def _count(c: httpx.AsyncClient, table: str) -> int:
    r = await _q(c, f"SELECT count(*) FROM {table}")
    assert r.status_code == 200, r.text
    count: int = r.json()["rows"][0][0]
    return count


async def test_a_trigger_that_raises_a_statements_class_is_seen_by_the_next_run(server: LiveServer) -> None:
    writer_token = await server.mint_token("d:query.write")
    async with server.client() as admin, server.client(writer_token) as writer:
        assert (await admin.put("/api/v1/db/d")).status_code == 201
        assert (await _q(admin, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")).status_code == 200
        for n in range(3):  # WRITE, remembered
            assert (await _q(writer, INSERT, [f"w{n}"])).status_code == 200
            assert (await _q(admin, INSERT, [f"a{n}"])).status_code == 200
        # the same INSERT now also writes SQLite's statistics through a trigger: ADMIN
        assert (await _q(admin, "ANALYZE")).status_code == 200
        trigger = "CREATE TRIGGER stat AFTER INSERT ON t BEGIN INSERT INTO sqlite_stat1 VALUES ('t', NULL, '9'); END"
        assert (await _q(admin, trigger)).status_code == 200
        r = await _q(admin, INSERT, ["after"])  # a stale WRITE class would refuse the admin here
        assert r.status_code == 200, r.text
        assert r.json()["changes"] == 1
        r = await _q(writer, INSERT, ["after"])  # and the write token needs query.admin now
        assert r.status_code == 403, r.text
        assert r.json()["code"] == "scope_denied"
        assert await _count(admin, "t") == 7
        # dropping the trigger makes it a WRITE again, for both
        assert (await _q(admin, "DROP TRIGGER stat")).status_code == 200
        assert (await _q(writer, INSERT, ["again"])).status_code == 200
        assert await _count(admin, "t") == 8


async def test_a_table_replaced_by_a_view_is_seen_by_a_remembered_select(server: LiveServer) -> None:
    reader_token = await server.mint_token("d:query.read")
    async with server.client() as admin, server.client(reader_token) as reader:
        assert (await admin.put("/api/v1/db/d")).status_code == 201
        assert (await _q(admin, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")).status_code == 200
        for _ in range(3):
            r = await _q(reader, "SELECT v FROM t")
            assert r.status_code == 200 and r.json()["rows"] == []
        # t becomes a view that calls a function nobody may call (rtreenode decodes raw r-tree nodes;
        # unlike load_extension, SQLite lets a view call it): the same SELECT is refused now
        assert (await _q(admin, "DROP TABLE t")).status_code == 200
        assert (await _q(admin, "CREATE VIEW t AS SELECT rtreenode(2, x'00') AS v")).status_code == 200
        r = await _q(reader, "SELECT v FROM t")
        assert r.status_code == 403 and r.json()["code"] == "statement_forbidden", r.text


async def test_a_batch_of_remembered_statements_is_still_one_transaction(server: LiveServer) -> None:
    async with server.client() as admin:
        assert (await admin.put("/api/v1/db/d")).status_code == 201
        assert (await _q(admin, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")).status_code == 200
        batch = {"statements": [{"sql": INSERT, "args": ["one"]}, {"sql": INSERT, "args": ["two"]}]}
        assert (await admin.post("/api/v1/db/d/query/batch", json=batch)).status_code == 200
        # the same texts again (remembered): the second conflicts, the first is rolled back with it
        batch = {"statements": [{"sql": INSERT, "args": ["three"]}, {"sql": INSERT, "args": ["one"]}]}
        r = await admin.post("/api/v1/db/d/query/batch", json=batch)
        assert r.status_code == 409 and r.json()["statement_index"] == 1, r.text
        assert await _count(admin, "t") == 2


async def test_a_prepared_statement_kept_for_writers_is_never_run_for_a_reader(server: LiveServer) -> None:
    reader_token = await server.mint_token("d:query.read")
    async with server.client() as admin, server.client(reader_token) as reader:
        assert (await admin.put("/api/v1/db/d")).status_code == 201
        assert (await _q(admin, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")).status_code == 200
        for n in range(3):  # the same text: prepared once on the writer, then handed back
            r = await _q(admin, INSERT, [f"a{n}"])
            assert r.status_code == 200 and r.json()["changes"] == 1 and r.json()["last_insert_rowid"] == n + 1
        for _ in range(2):
            r = await _q(reader, INSERT, ["r"])
            assert r.status_code == 403 and r.json()["code"] == "scope_denied"
        assert await _count(admin, "t") == 3
