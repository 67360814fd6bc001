"""The SQL sandbox over HTTP: what user SQL may call and write, and how long one call may run.

Each test here reproduces a report from issue 15 against a real server: a native
pointer handed to fts3_tokenizer() (SIGSEGV of the whole process), AUTOINCREMENT
counters pushed to their maximum (every later publish 500), writes into full-text
shadow tables (a corrupt index), and single function calls (printf, replace,
zeroblob, group_concat) that outran the time limit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from support.live import LiveServer, make_settings, start_live_server

MARGIN_S = 3.0  # slack over the time limit for a loaded 2-core machine; the bugs took 11-30 s


async def _q(c: httpx.AsyncClient, sql: str, args: Any = None, db: str = "d", **opts: Any) -> httpx.Response:
    body: dict[str, Any] = {"sql": sql}
    if args is not None:
        body["args"] = args
    if opts:
        body["options"] = opts
    return await c.post(f"/api/v1/db/{db}/query", json=body)


def _refused(r: httpx.Response) -> bool:
    return (
        r.status_code == 403
        and r.headers["content-type"].startswith("application/problem+json")
        and r.json()["code"] == "statement_forbidden"
    )


async def test_fts3_tokenizer_is_refused_and_full_text_keeps_working(server: LiveServer) -> None:
    async with server.client() as admin:
        assert (await admin.put("/api/v1/db/d")).status_code == 201
        assert (await _q(admin, "CREATE VIRTUAL TABLE notes USING fts4(body)")).status_code == 200
        assert (await _q(admin, "INSERT INTO notes(body) VALUES ('hello world')")).status_code == 200
    reader = await server.mint_token("d:query.read")
    async with server.client(reader) as c:
        # registering a native pointer as a tokenizer, or reading one out, is refused for everyone
        assert _refused(await _q(c, "SELECT fts3_tokenizer('simple', x'4141414141414141')"))
        assert _refused(await _q(c, "SELECT hex(fts3_tokenizer('simple'))"))
        assert _refused(await _q(c, "SELECT fts3_tokenizer(?, ?)", ["porter", {"$base64": "QUFBQUFBQUE="}]))
        assert _refused(await _q(c, "SELECT load_extension('/tmp/x.so')"))
        # ...on both read connections of the pool: the document still answers full-text reads
        for _ in range(4):
            r = await _q(c, "SELECT body, snippet(notes) FROM notes WHERE notes MATCH 'hello'")
            assert r.status_code == 200, r.text
            assert r.json()["rows"] == [["hello world", "<b>hello</b> world"]]


async def test_autoincrement_counters_are_read_only(server: LiveServer) -> None:
    async with server.client() as admin:
        await admin.put("/api/v1/db/d")
        assert (await admin.post("/api/v1/db/d/messages", json={"topic": "t", "payload": 1})).status_code == 201
    writer = await server.mint_token("d:query.read", "d:query.write")
    async with server.client(writer) as c:
        for name in ("_skald_messages", "webhook_inbox", "_skald_changes"):
            sql = "UPDATE sqlite_sequence SET seq = 9223372036854775807 WHERE name = ?"
            assert _refused(await _q(c, sql, [name]))
        assert _refused(await _q(c, "DELETE FROM sqlite_sequence"))
        assert _refused(await _q(c, "INSERT INTO sqlite_sequence(name, seq) VALUES ('webhook_inbox', 1)"))
        # reading the counters stays allowed
        r = await _q(c, "SELECT seq FROM sqlite_sequence WHERE name = '_skald_messages'")
        assert r.status_code == 200 and r.json()["rows"] == [[1]]
    async with server.client() as admin:
        r = await admin.post("/api/v1/db/d/messages", json={"topic": "t", "payload": 2})
        assert r.status_code == 201, r.text
        r = await admin.post("/api/v1/db/d/webhooks/raw", content=b"hi", headers={"content-type": "text/plain"})
        assert r.status_code in (200, 201, 202), r.text
        # an AUTOINCREMENT user table is renamed and dropped with its counter as before
        await _q(admin, "CREATE TABLE a(id INTEGER PRIMARY KEY AUTOINCREMENT, v)")
        assert (await _q(admin, "INSERT INTO a(v) VALUES (1)")).status_code == 200
        assert (await _q(admin, "ALTER TABLE a RENAME TO b")).status_code == 200
        r = await _q(admin, "SELECT seq FROM sqlite_sequence WHERE name = 'b'")
        assert r.json()["rows"] == [[1]]
        assert (await _q(admin, "DROP TABLE b")).status_code == 200


SHADOW_WRITES = [
    "DELETE FROM f5_data",
    "UPDATE f5_config SET v = 99",
    "INSERT INTO f5_docsize(id, sz) VALUES (99, x'00')",
    "DELETE FROM f4_segdir",
    "UPDATE f4_content SET c0body = 'x'",
    "DELETE FROM r_node",
    "UPDATE r_rowid SET nodeno = 5",
    "DROP TABLE f5_idx",
    "ALTER TABLE f4_stat RENAME TO mine",
    "CREATE INDEX sneaky ON f5_content(c0)",
    "CREATE TRIGGER sneaky AFTER INSERT ON f5_data BEGIN SELECT 1; END",
    "WITH x AS (SELECT 1) DELETE FROM f5_data",
]


async def test_shadow_tables_are_read_only(server: LiveServer) -> None:
    async with server.client() as admin:  # an admin token: the refusal holds for every token
        await admin.put("/api/v1/db/d")
        for sql in [
            "CREATE VIRTUAL TABLE f5 USING fts5(body)",
            "CREATE VIRTUAL TABLE f4 USING fts4(body)",
            "CREATE VIRTUAL TABLE r USING rtree(id, x0, x1)",
            "CREATE TABLE plain(v)",
            "CREATE TRIGGER plain_spy AFTER INSERT ON plain BEGIN DELETE FROM f5_data; END",
        ]:
            assert (await _q(admin, sql)).status_code == 200, sql
        for i in range(20):
            for sql in ["INSERT INTO f5 VALUES (?)", "INSERT INTO f4 VALUES (?)"]:
                assert (await _q(admin, sql, [f"word{i} common"])).status_code == 200
            assert (await _q(admin, "INSERT INTO r VALUES (?, 0, 1)", [i])).status_code == 200
        for sql in SHADOW_WRITES:
            assert _refused(await _q(admin, sql)), sql
        # a trigger that writes a shadow table is refused when it would fire
        assert _refused(await _q(admin, "INSERT INTO plain VALUES (1)"))
        # reads of shadow tables stay allowed
        assert (await _q(admin, "SELECT count(*) FROM f5_data")).status_code == 200
        # the indexes are intact: inserts, queries and their own integrity checks work
        for sql in [
            "INSERT INTO f5 VALUES ('later')",
            "INSERT INTO f4 VALUES ('later')",
            "INSERT INTO r VALUES (100, 0, 1)",
            "INSERT INTO f5(f5) VALUES ('integrity-check')",
            "INSERT INTO f4(f4) VALUES ('integrity-check')",
            "INSERT INTO f5(f5) VALUES ('optimize')",
            "UPDATE f5 SET body = 'changed' WHERE rowid = 1",
            "DELETE FROM f4 WHERE rowid = 2",
        ]:
            r = await _q(admin, sql)
            assert r.status_code == 200, (sql, r.text)
        r = await _q(admin, "SELECT count(*) FROM f5 WHERE f5 MATCH 'common'")
        assert r.json()["rows"] == [[19]]
        # dropping the virtual table drops its shadow tables (the module's own DDL)
        assert (await _q(admin, "DROP TABLE f5")).status_code == 200
        r = await _q(admin, "SELECT count(*) FROM sqlite_master WHERE name LIKE 'f5%'")
        assert r.json()["rows"] == [[0]]


async def test_unlisted_functions_and_modules_are_refused(server: LiveServer) -> None:
    async with server.client() as admin:
        await admin.put("/api/v1/db/d")
        for sql in [
            "SELECT fts5(NULL)",
            "SELECT rtreenode(2, x'00')",
            "SELECT sqlite_log(1, 'into the server log')",
            "CREATE VIRTUAL TABLE pages USING dbstat",
        ]:
            assert _refused(await _q(admin, sql)), sql
        sql = "SELECT upper('a'), json_extract('{\"a\":2}', '$.a'), '{\"b\":3}' ->> '$.b', round(pi(), 2)"
        r = await _q(admin, sql)
        assert r.json()["rows"] == [["A", 2, 3, 3.14]]


# ---- one call cannot outrun the time limit ---------------------------------------------------------

A = "printf('%.*c', 4000000, 'a')"  # 4 MB of 'a', under the 4 MiB value limit of these tests
ONE_CALL: list[tuple[str, list[Any] | None, str | list[list[Any]]]] = [
    # SQLite's printf loops once per repeated character even past the length limit
    ("SELECT printf('%.*c', 2147483647, 'x')", None, [[None]]),
    ("SELECT format('%.2147483647c', 'x')", None, [[None]]),
    ("SELECT length(printf('%.*c', ?, 'x'))", [2**31 - 1], [[None]]),
    # SQLite's instr and replace compare the pattern at every offset, trim every pair of characters
    (f"SELECT instr({A}, printf('%.*c', 2000000, 'a') || 'b')", None, [[0]]),
    (f"SELECT length(replace({A}, printf('%.*c', 2000000, 'a') || 'b', 'x'))", None, [[4000000]]),
    (f"SELECT length(trim({A}, printf('%.*c', 2000000, 'b') || 'a'))", None, [[0]]),
    (f"SELECT length(ltrim({A}, 'ba'))", None, [[0]]),
    (f"SELECT length(rtrim({A} || 'c', printf('%.*c', 2000000, 'b') || 'a'))", None, [[4000001]]),
    (f"SELECT instr(CAST({A} AS BLOB), CAST(printf('%.*c', 2000000, 'a') || 'b' AS BLOB))", None, [[0]]),
    (f"SELECT trim(CAST({A} AS BLOB), CAST(printf('%.*c', 2000000, 'b') AS BLOB))", None, "value_too_large"),
    # SQLite's LIKE/GLOB try the rest of the pattern at every occurrence of its next character
    (f"SELECT {A} LIKE '%' || printf('%.*c', 1000, 'a') || 'b'", None, [[0]]),
    (f"SELECT {A} GLOB '*' || printf('%.*c', 1000, 'a') || 'b'", None, [[0]]),
    (f"SELECT {A} LIKE '%' || printf('%.*c', 1000, '_') || 'b%'", None, [[0]]),
    (f"SELECT ({A} || 'xb') LIKE '%a_b' ESCAPE '!'", None, [[1]]),
    # a single-character wildcard inside a long segment is searched with a regex; past a budget
    (f"SELECT {A} GLOB '*' || printf('%.*c', 1000, 'a') || '?b*'", None, "value_too_large"),
    # SQLite's json_patch searches the target's keys one by one for every key of the patch
    (
        "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 100000) "
        "SELECT length(json_patch((SELECT json_group_object('a' || i, i) FROM k), "
        "(SELECT json_group_object('b' || i, i) FROM k)))",
        None,
        "value_too_large",
    ),
    (
        "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 100000) "
        "SELECT json_patch((SELECT json_group_object('a' || i, i) FROM k), '{\"a7\": null}') ->> '$.a8'",
        None,
        [[8]],
    ),
    # these stop at the value length limit
    ("SELECT replace(printf('%.*c', 100000, 'x'), 'x', printf('%.*c', 10000, 'y'))", None, "value_too_large"),
    ("SELECT zeroblob(1000000000)", None, "value_too_large"),
    ("SELECT length(randomblob(1000000000))", None, "value_too_large"),
    (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) "
        "SELECT length(group_concat(printf('%.*c', 1000, 'x'))) FROM c",
        None,
        "value_too_large",
    ),
    # group_concat keeps stepping (and failing to append) until its input ends: the progress
    # handler runs between rows
    (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
        "SELECT length(group_concat(printf('%.*c', 1000, 'x'))) FROM c",
        None,
        "query_timeout",
    ),
    # a recursive CTE without a big value: the progress handler stops it
    ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c", None, "query_timeout"),
]


@pytest.fixture
async def bounded(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[LiveServer]:
    live = await start_live_server(
        nursery, make_settings(tmp_path / "data", query_timeout_ms=1000, query_max_value_bytes=4 * 1024 * 1024)
    )
    try:
        yield live
    finally:
        await live.stop()


def _check(r: httpx.Response, expected: str | list[list[Any]]) -> None:
    if isinstance(expected, str):
        assert r.status_code == 400 and r.json()["code"] == expected, r.text
    else:
        assert r.status_code == 200 and r.json()["rows"] == expected, r.text


@pytest.mark.parametrize(("sql", "args", "expected"), ONE_CALL)
async def test_one_call_ends_within_the_time_limit_on_read(
    bounded: LiveServer, sql: str, args: list[Any] | None, expected: str | list[list[Any]]
) -> None:
    async with bounded.client() as c:
        await c.put("/api/v1/db/d")
        start = trio.current_time()
        r = await _q(c, sql, args)
        elapsed = trio.current_time() - start
        print(f"{sql[:60]!r}: {elapsed:.2f} s -> {r.status_code}")
        assert elapsed < 1.0 + MARGIN_S, f"{elapsed:.1f} s"
        _check(r, expected)


@pytest.mark.parametrize(("sql", "args", "expected"), ONE_CALL)
async def test_one_call_does_not_hold_the_writer(
    bounded: LiveServer, sql: str, args: list[Any] | None, expected: str | list[list[Any]]
) -> None:
    async with bounded.client() as c:
        await c.put("/api/v1/db/d")
        await _q(c, "CREATE TABLE t(a)")
        start = trio.current_time()
        r = await _q(c, "INSERT INTO t(a) " + sql, args)
        elapsed = trio.current_time() - start
        # the write op has ended, so the document's writer is free: a publish goes straight through
        p = await c.post("/api/v1/db/d/messages", json={"topic": "t", "payload": 1})
        print(f"{sql[:60]!r}: write {elapsed:.2f} s -> {r.status_code}")
        assert elapsed < 1.0 + MARGIN_S, f"{elapsed:.1f} s"
        assert p.status_code == 201
        count = (await _q(c, "SELECT count(*) FROM t")).json()["rows"]
        if isinstance(expected, str):
            assert r.status_code == 400 and r.json()["code"] == expected, r.text
            assert count == [[0]]  # rolled back
        else:
            assert r.status_code == 200 and count == [[1]], r.text


def _fts_rows(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("DELETE FROM f5_data WHERE id > 10")  # what the sandbox now refuses
        conn.execute("UPDATE f4_segdir SET root = x'00'")
        conn.commit()
    finally:
        conn.close()


async def test_doctor_finds_a_corrupt_full_text_index(tmp_path: Path) -> None:
    from skald.documents.doctor import run_doctor

    data_dir = tmp_path / "data"
    async with trio.open_nursery() as nursery:
        live = await start_live_server(nursery, make_settings(data_dir))
        async with live.client() as admin:
            for db in ("good", "bad"):
                await admin.put(f"/api/v1/db/{db}")
                await _q(admin, "CREATE VIRTUAL TABLE f5 USING fts5(body)", db=db)
                await _q(admin, "CREATE VIRTUAL TABLE f4 USING fts4(body)", db=db)
                await _q(admin, "CREATE VIRTUAL TABLE r USING rtree(id, x0, x1)", db=db)
                for i in range(30):
                    await _q(admin, "INSERT INTO f5 VALUES (?)", [f"hello {i}"], db=db)
                    await _q(admin, "INSERT INTO f4 VALUES (?)", [f"hello {i}"], db=db)
                    await _q(admin, "INSERT INTO r VALUES (?, 0, 1)", [i], db=db)
        await live.stop()
    report, code = await trio.to_thread.run_sync(run_doctor, data_dir)
    assert code == 0 and report["status"] == "ok", report

    await trio.to_thread.run_sync(_fts_rows, data_dir / "documents" / "bad.sqlite3")
    conn = sqlite3.connect(data_dir / "documents" / "bad.sqlite3")
    try:
        conn.execute("UPDATE r_rowid SET nodeno = 5")
        conn.commit()
    finally:
        conn.close()
    report, code = await trio.to_thread.run_sync(run_doctor, data_dir)
    assert code == 1 and report["status"] == "problems found"
    docs = {d["db_id"]: d for d in report["documents"]}
    assert docs["good"]["ok"] is True
    bad = docs["bad"]
    assert bad["ok"] is False and bad["quick_check"] == "ok"  # SQLite's own check sees nothing wrong
    assert set(bad["index_checks"]) == {"f5", "f4", "r"}
    assert all(result != "ok" for result in bad["index_checks"].values())
