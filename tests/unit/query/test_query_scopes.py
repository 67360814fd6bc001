"""Scope classes are decided by SQLite's authorizer: a corpus of statements x {read, write, admin}."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from skald.db.connection import DocConnection, open_connection
from skald.db.migrations import apply_migrations
from skald.db.sqlscope import StatementClass
from skald.errors import SkaldError
from skald.query.service import Limits, Statement, classify_sync, run_statement

R, W, A, F = StatementClass.READ, StatementClass.WRITE, StatementClass.ADMIN, StatementClass.FORBIDDEN

CORPUS: list[tuple[str, StatementClass]] = [
    # reads
    ("SELECT 1", R),
    ("SELECT * FROM t", R),
    ("SELECT count(*) FROM t JOIN u ON u.t_id = t.id", R),
    ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5) SELECT x FROM c", R),
    ("SELECT * FROM v", R),
    ("SELECT key FROM _skald_meta", R),
    ("SELECT name FROM sqlite_master", R),
    ("SELECT upper(name), length(name), json_object('a', 1) FROM t", R),
    ("PRAGMA table_info(t)", R),
    ("PRAGMA user_version", R),
    ("PRAGMA journal_mode", R),
    ("SELECT * FROM pragma_table_info('t')", R),
    ("EXPLAIN QUERY PLAN SELECT * FROM t WHERE id = 1", R),
    ("SELECT highlight(notes5, 0, '[', ']'), bm25(notes5) FROM notes5 WHERE notes5 MATCH 'hello'", R),
    ("SELECT snippet(notes4), matchinfo(notes4), offsets(notes4) FROM notes4 WHERE notes4 MATCH 'hello'", R),
    ("SELECT * FROM boxes WHERE x0 < 1", R),
    ("SELECT count(*) FROM notes5_data", R),
    ("SELECT seq FROM sqlite_sequence", R),
    ("SELECT printf('%.*c', 2147483647, 'x'), format('%d', 1)", R),
    ("  select 1 ; -- trailing comment", R),
    # writes
    ("INSERT INTO t(name) VALUES ('x')", W),
    ("INSERT INTO t(name) VALUES ('x') RETURNING id", W),
    ("UPDATE t SET name = 'y' WHERE id = 1", W),
    ("DELETE FROM t WHERE id = 1", W),
    ("REPLACE INTO t(id, name) VALUES (1, 'z')", W),
    ("INSERT OR REPLACE INTO t(id, name) VALUES (2, 'z')", W),
    ("WITH x AS (SELECT 1 AS id) DELETE FROM t WHERE id IN (SELECT id FROM x)", W),
    ("WITH x(n) AS (VALUES ('cte')) INSERT INTO t(name) SELECT n FROM x", W),
    ("INSERT INTO logged(msg) VALUES ('fires a trigger on a user table')", W),
    ("INSERT INTO t(name) VALUES ('a') ON CONFLICT(id) DO UPDATE SET name = excluded.name", W),
    ("INSERT INTO auto(v) VALUES (1)", W),
    ("INSERT INTO notes5(body) VALUES ('full text')", W),
    ("UPDATE notes4 SET body = 'other' WHERE rowid = 1", W),
    ("INSERT INTO boxes VALUES (7, 0, 1)", W),
    ("INSERT INTO notes5(notes5) VALUES ('optimize')", W),
    # admin (DDL and the rest)
    ("CREATE TABLE z(a)", A),
    ("CREATE INDEX t_name ON t(name)", A),
    ("CREATE VIEW v2 AS SELECT * FROM t", A),
    ("CREATE TRIGGER tr2 AFTER INSERT ON t BEGIN UPDATE u SET t_id = new.id; END", A),
    ("DROP TABLE u", A),
    ("ALTER TABLE t ADD COLUMN extra", A),
    ("ALTER TABLE u RENAME TO u2", A),
    ("ALTER TABLE u DROP COLUMN t_id", A),
    ("ALTER TABLE auto RENAME TO auto2", A),
    ("DROP TABLE auto", A),
    ("DROP TABLE notes5", A),
    ("CREATE VIRTUAL TABLE more USING rtree(id, a, b)", A),
    ("ANALYZE", A),
    ("REINDEX", A),
    ("PRAGMA user_version = 7", A),
    ("CREATE VIRTUAL TABLE ft USING fts5(body)", A),
    # always refused
    ("ATTACH DATABASE '/tmp/other.db' AS other", F),
    ("DETACH DATABASE other", F),
    ("VACUUM", F),
    ("VACUUM INTO '/tmp/copy.db'", F),
    ("SELECT load_extension('/tmp/evil.so')", F),
    ("PRAGMA journal_mode=DELETE", F),
    ("PRAGMA synchronous=OFF", F),
    ("PRAGMA locking_mode=EXCLUSIVE", F),
    ("PRAGMA foreign_keys=OFF", F),
    ("PRAGMA writable_schema=ON", F),
    ("PRAGMA temp_store_directory='/tmp'", F),
    ("PRAGMA wal_checkpoint(TRUNCATE)", F),
    ("BEGIN", F),
    ("COMMIT", F),
    ("SAVEPOINT sp", F),
    ("RELEASE sp", F),
    ("CREATE TEMP TABLE tmp(a)", F),
    ("CREATE TEMP TRIGGER spy AFTER INSERT ON t BEGIN SELECT 1; END", F),
    ("INSERT INTO _skald_meta(key, value) VALUES ('k', 'v')", F),
    ("UPDATE _skald_meta SET value = 'x'", F),
    ("DELETE FROM _SKALD_META", F),
    ("WITH x AS (SELECT 1) DELETE FROM _skald_meta", F),
    ("DELETE FROM schema_migrations", F),
    ("DROP TABLE _skald_meta", F),
    ("CREATE TABLE _skald_mine(a)", F),
    ("CREATE TRIGGER spy AFTER INSERT ON _skald_meta BEGIN SELECT 1; END", F),
    ("CREATE INDEX sneaky ON _skald_meta(value)", F),
    ("ALTER TABLE _skald_meta RENAME TO mine", F),
    ("INSERT INTO sneaky_trigger_target(a) VALUES (1)", F),  # its trigger writes _skald_meta
    # functions not on the allow-list
    ("SELECT fts3_tokenizer('simple', x'4141414141414141')", F),
    ("SELECT hex(fts3_tokenizer('simple'))", F),
    ("SELECT fts5(NULL)", F),
    ("SELECT rtreenode(2, x'00')", F),
    ("SELECT optimize(notes4) FROM notes4", F),
    ("SELECT sqlite_log(1, 'x')", F),
    ("SELECT * FROM v_unlisted", F),  # a view that calls one
    ("CREATE VIRTUAL TABLE pages USING dbstat", F),
    # sqlite_sequence: AUTOINCREMENT counters, skald's among them
    ("UPDATE sqlite_sequence SET seq = 9223372036854775807 WHERE name = '_skald_messages'", F),
    ("DELETE FROM sqlite_sequence", F),
    ("INSERT INTO sqlite_sequence(name, seq) VALUES ('webhook_inbox', 1)", F),
    # shadow tables of full-text and r-tree indexes
    ("DELETE FROM notes5_data", F),
    ("UPDATE notes5_config SET v = 99", F),
    ("INSERT INTO notes4_segdir VALUES (1, 2, 3, 4, 5, 6)", F),
    ("DELETE FROM boxes_node", F),
    ("DROP TABLE notes5_idx", F),
    ("ALTER TABLE notes4_content RENAME TO mine", F),
    ("CREATE INDEX sneaky_idx ON notes5_content(c0)", F),
    ("CREATE TRIGGER sneaky2 AFTER INSERT ON notes5_data BEGIN SELECT 1; END", F),
    ("INSERT INTO shadow_trigger_target(a) VALUES (1)", F),  # its trigger deletes notes5_data
]

# Transaction statements and VACUUM are refused at classification (test_classification);
# inside the test's own transaction they would fail for unrelated reasons.
RUNNABLE = [
    c for c in CORPUS if not c[0].upper().startswith(("VACUUM", "BEGIN", "COMMIT", "RELEASE", "SAVEPOINT"))
]


def _setup(conn: DocConnection) -> None:
    conn.executescript(
        """
        CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE u(id INTEGER PRIMARY KEY, t_id INTEGER);
        CREATE TABLE logged(id INTEGER PRIMARY KEY, msg TEXT);
        CREATE TABLE audit(msg TEXT);
        CREATE TRIGGER logged_audit AFTER INSERT ON logged BEGIN INSERT INTO audit VALUES (new.msg); END;
        CREATE TABLE auto(id INTEGER PRIMARY KEY AUTOINCREMENT, v);
        CREATE TABLE sneaky_trigger_target(a);
        CREATE TRIGGER sneaky AFTER INSERT ON sneaky_trigger_target
            BEGIN INSERT INTO _skald_meta(key, value) VALUES ('pwned', new.a); END;
        CREATE VIEW v AS SELECT id, name FROM t;
        INSERT INTO t(name) VALUES ('one'), ('two');
        CREATE VIRTUAL TABLE notes5 USING fts5(body);
        CREATE VIRTUAL TABLE notes4 USING fts4(body);
        CREATE VIRTUAL TABLE boxes USING rtree(id, x0, x1);
        INSERT INTO notes5(body) VALUES ('hello world');
        INSERT INTO notes4(body) VALUES ('hello world');
        INSERT INTO boxes VALUES (1, 0, 1);
        CREATE VIEW v_unlisted AS SELECT sqlite_log(1, 'from a view') AS p;
        CREATE TABLE shadow_trigger_target(a);
        CREATE TRIGGER shadow_spy AFTER INSERT ON shadow_trigger_target BEGIN DELETE FROM notes5_data; END;
        """
    )


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[DocConnection]:
    connection = open_connection(tmp_path / "doc.db")
    apply_migrations(connection, "document")
    _setup(connection)
    try:
        yield connection
    finally:
        connection.close()


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 40
    assert {cls for _, cls in CORPUS} == {R, W, A, F}


def _classify(conn: DocConnection, sql: str) -> StatementClass:
    try:
        return classify_sync(conn, Statement(sql, ()))
    except SkaldError as exc:
        if exc.code == "statement_forbidden":
            return F
        raise


@pytest.mark.parametrize(("sql", "expected"), CORPUS)
def test_classification(conn: DocConnection, sql: str, expected: StatementClass) -> None:
    assert _classify(conn, sql) == expected


@pytest.mark.parametrize("scope", [R, W, A], ids=["read", "write", "admin"])
@pytest.mark.parametrize(("sql", "expected"), RUNNABLE)
def test_enforced_while_running(
    conn: DocConnection, sql: str, expected: StatementClass, scope: StatementClass
) -> None:
    """Run each statement with the policy of each scope class: allowed iff its class fits."""
    limits = Limits(timeout_ms=2000, max_rows=100, max_bytes=100_000)
    allowed = expected != F and expected <= scope
    conn.execute("BEGIN IMMEDIATE")
    try:
        if allowed:
            run_statement(conn, Statement(sql, ()), scope, limits)
        else:
            with pytest.raises(SkaldError) as info:
                run_statement(conn, Statement(sql, ()), scope, limits)
            assert info.value.code in {"scope_denied", "statement_forbidden"}
            assert info.value.status == 403
    finally:
        conn.execute("ROLLBACK")
    assert conn.execute("SELECT count(*) FROM _skald_meta WHERE key = 'pwned'").fetchone()[0] == 0
    conn.execute("INSERT INTO notes5(notes5) VALUES ('integrity-check')")  # the index is intact
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_repeated_statements_still_reach_the_authorizer(conn: DocConnection) -> None:
    """A cached prepared statement would skip the authorizer (no tracking, no policy)."""
    for value in range(3):
        conn.written_tables = set()
        conn.execute("INSERT INTO t(name) VALUES (?)", (str(value),))
        assert conn.written_tables == {"t"}
    limits = Limits(timeout_ms=2000, max_rows=10, max_bytes=10_000)
    for _ in range(2):
        with pytest.raises(SkaldError):
            run_statement(conn, Statement("DELETE FROM t", ()), R, limits)
