"""Hrana over HTTP at the wire, for what no real client sends over JSON: v3/cursor, describe, stored SQL."""

from __future__ import annotations

import json
from typing import Any

from support.live import LiveServer

DOC = "wire"
BASE = f"/api/v1/db/{DOC}/libsql"


def stmt(sql: str, *args: dict[str, Any]) -> dict[str, Any]:
    return {"sql": sql, "args": list(args)}


async def test_cursor_describe_stored_sql_and_conditions(server: LiveServer) -> None:
    async with server.client() as client:
        assert (await client.put(f"/api/v1/db/{DOC}")).status_code == 201
        r = await client.post(BASE + "/v3/pipeline", json={"baton": None, "requests": [
            {"type": "sequence",
             "sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t (v) VALUES ('a');"},
            {"type": "store_sql", "sql_id": 7, "sql": "INSERT INTO t (v) VALUES (?)"},
            {"type": "execute", "stmt": {"sql_id": 7, "args": [{"type": "text", "value": "b"}]}},
            {"type": "describe", "sql": "SELECT id, v AS value FROM t WHERE id > :min AND v <> ?"},
            {"type": "describe", "sql": "DELETE FROM t"},
            {"type": "close_sql", "sql_id": 7},
            {"type": "execute", "stmt": {"sql_id": 7}},
            {"type": "batch", "batch": {"steps": [
                {"stmt": stmt("SELECT nope FROM t")},                                       # 0: fails
                {"stmt": stmt("SELECT 1"), "condition": {"type": "error", "step": 0}},      # 1: runs
                {"stmt": stmt("SELECT 2"), "condition": {"type": "ok", "step": 0}},         # 2: skipped
                {"stmt": stmt("SELECT 3"), "condition": {"type": "or", "conds": [
                    {"type": "ok", "step": 2}, {"type": "not", "cond": {"type": "error", "step": 2}}]}},  # 3: runs
                {"stmt": stmt("SELECT 4"), "condition": {"type": "and", "conds": [
                    {"type": "is_autocommit"}, {"type": "ok", "step": 1}]}},                # 4: runs
            ]}},
        ]})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [res["type"] for res in results] == ["ok"] * 6 + ["error", "ok"], results
        assert results[2]["response"]["result"]["last_insert_rowid"] == "2"
        described = results[3]["response"]["result"]
        assert described["params"] == [{"name": ":min"}, {"name": None}]
        assert [c["name"] for c in described["cols"]] == ["id", "value"] and described["is_readonly"] is True
        assert results[4]["response"]["result"]["is_readonly"] is False
        assert results[6]["error"]["code"] == "HRANA_SQL_NOT_FOUND"
        batch = results[7]["response"]["result"]
        assert [e is not None for e in batch["step_errors"]] == [True, False, False, False, False]
        assert [s is not None for s in batch["step_results"]] == [False, True, False, True, True]
        assert batch["step_errors"][0]["code"] == "SQLITE_ERROR"
        baton = r.json()["baton"]

        r = await client.post(BASE + "/v3/cursor", json={"baton": baton, "batch": {"steps": [
            {"stmt": stmt("SELECT id, v FROM t ORDER BY id")},
            {"stmt": stmt("INSERT INTO t (id) VALUES (1)")},
        ]}})
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.text.splitlines()]
        assert lines[0]["baton"] and lines[0]["baton"] != baton and lines[0]["base_url"] is None
        assert [entry["type"] for entry in lines[1:]] == ["step_begin", "row", "row", "step_end", "step_error"]
        assert lines[2]["row"] == [{"type": "integer", "value": "1"}, {"type": "text", "value": "a"}]
        assert lines[5]["error"]["code"] == "SQLITE_CONSTRAINT_PRIMARYKEY"
