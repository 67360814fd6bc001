from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from skald.db.connection import DocConnection, open_connection
from skald.db.migrations import apply_migrations
from skald.sync.changefeed import INCLUDED_CAPABILITY_TABLES, prune, read_changes, sync_triggers


def _open(tmp_path: Path) -> sqlite3.Connection:
    conn = open_connection(tmp_path / "d.sqlite")
    apply_migrations(conn, "document")
    return conn


def _page(conn: sqlite3.Connection, since: int = 0, limit: int = 100) -> dict[str, Any]:
    """The feed without the capability tables every document has from its migrations."""
    page = read_changes(conn, since, limit)
    return {**page, "changes": [c for c in page["changes"] if c["table"] not in INCLUDED_CAPABILITY_TABLES]}


def _write(conn: sqlite3.Connection, *sql: str) -> None:
    conn.execute("BEGIN IMMEDIATE")
    for s in sql:
        conn.execute(s)
    sync_triggers(conn)
    conn.execute("COMMIT")


def test_insert_update_delete_recorded_in_order(tmp_path: Path) -> None:
    conn = _open(tmp_path)
    _write(
        conn,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, data BLOB, x REAL)",
        "INSERT INTO t VALUES (1, 'a', x'00ff', 0.1)",
    )
    _write(conn, "INSERT INTO t VALUES (2, 'b', NULL, 1e300)", "INSERT INTO t VALUES (9, 'i', NULL, -9e999)")
    _write(conn, "UPDATE t SET name = 'c', id = 3 WHERE id = 2")
    _write(conn, "DELETE FROM t WHERE id = 1")
    page = _page(conn)
    ops = [(c["op"], c.get("rowid"), c.get("row")) for c in page["changes"]]
    assert ops[0][0] == "schema"
    assert ops[1] == ("insert", 1, {"id": 1, "name": "a", "data": {"$base64": "AP8="}, "x": 0.1})
    assert ops[2] == ("insert", 2, {"id": 2, "name": "b", "data": None, "x": 1e300})
    assert ops[3] == ("insert", 9, {"id": 9, "name": "i", "data": None, "x": {"$real": "-Inf"}})
    ops = ops[:3] + ops[4:]
    assert ops[3] == ("update", 2, {"id": 3, "name": "c", "data": None, "x": 1e300})
    assert page["changes"][4]["new_rowid"] == 3
    assert ops[4] == ("delete", 1, None)
    seqs = [c["seq"] for c in page["changes"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert page["last_seq"] == seqs[-1] and not page["reset"]


def test_without_rowid_keys_and_capability_tables_excluded(tmp_path: Path) -> None:
    conn = _open(tmp_path)
    _write(conn, "CREATE TABLE kv (k TEXT PRIMARY KEY, v) WITHOUT ROWID", "INSERT INTO kv VALUES ('a', 1)")
    _write(conn, "UPDATE kv SET v = 2", "INSERT INTO _skald_meta VALUES ('x', 'y')")
    changes = _page(conn)["changes"]
    assert [c["table"] for c in changes] == ["kv", "kv", "kv"]
    assert changes[2] == {
        "seq": changes[2]["seq"],
        "table": "kv",
        "op": "update",
        "key": {"k": "a"},
        "row": {"k": "a", "v": 2},
    }


def test_schema_change_and_drop(tmp_path: Path) -> None:
    conn = _open(tmp_path)
    _write(conn, "CREATE TABLE t (a)", "INSERT INTO t VALUES (1)")
    _write(conn, "ALTER TABLE t ADD COLUMN b DEFAULT 5")
    _write(conn, "INSERT INTO t VALUES (2, 6)")
    _write(conn, "ALTER TABLE t RENAME TO u", "DROP TABLE IF EXISTS absent")
    _write(conn, "INSERT INTO u VALUES (3, 7)")
    _write(conn, "DROP TABLE u")
    ops = [(c["table"], c["op"], c.get("row")) for c in _page(conn)["changes"]]
    assert ("t", "insert", {"a": 1, "b": 5}) in ops
    assert ("t", "insert", {"a": 2, "b": 6}) in ops
    assert ("u", "insert", {"a": 3, "b": 7}) in ops
    assert ops.count(("u", "insert", {"a": 3, "b": 7})) == 1
    assert ("t", "drop", None) in ops and ops[-1] == ("u", "drop", None)
    triggers = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name IN ('t', 'u')"
    ).fetchone()[0]
    assert triggers == 0


def test_reset_when_pruned_or_from_the_future(tmp_path: Path) -> None:
    conn = _open(tmp_path)
    _write(conn, "CREATE TABLE t (a)")
    for i in range(20):
        _write(conn, f"INSERT INTO t VALUES ({i})")
    conn.execute("BEGIN IMMEDIATE")
    prune(conn, 5)
    conn.execute("COMMIT")
    assert read_changes(conn, 0, 100)["reset"] is True
    top = read_changes(conn, 20, 100)
    assert not top["reset"] and len(top["changes"]) == top["last_seq"] - 20
    assert read_changes(conn, top["last_seq"] + 1, 10)["reset"] is True


def test_wide_tables_are_recorded_whole(tmp_path: Path) -> None:
    conn = _open(tmp_path)
    columns = [f"c{i}" for i in range(150)]
    values = ", ".join("NULL" if i == 140 else "x'01'" if i == 130 else str(i) for i in range(150))
    _write(conn, f"CREATE TABLE wide ({', '.join(columns)})", f"INSERT INTO wide VALUES ({values})")
    row = _page(conn)["changes"][1]["row"]
    assert list(row) == columns
    assert (
        row["c0"] == 0 and row["c149"] == 149 and row["c140"] is None and row["c130"] == {"$base64": "AQ=="}
    )


def test_feed_triggers_record_under_a_policy_that_denies_capability_tables(tmp_path: Path) -> None:
    conn = _open(tmp_path)
    assert isinstance(conn, DocConnection)
    _write(conn, "CREATE TABLE t (a)")

    def deny_capability_writes(action: int, arg1: str | None, *rest: str | None) -> int:
        if action == sqlite3.SQLITE_INSERT and (arg1 or "").startswith("_skald_"):
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    with conn.policy(deny_capability_writes):
        _write(conn, "INSERT INTO t VALUES (1)")
        try:
            conn.execute("INSERT INTO _skald_changes (tbl, op) VALUES ('t', 'insert')")
        except sqlite3.DatabaseError as exc:
            assert "not authorized" in str(exc)
        else:
            raise AssertionError("a direct write to the feed must still be refused")
    assert [c["op"] for c in _page(conn)["changes"]] == ["schema", "insert"]
