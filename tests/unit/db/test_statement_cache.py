"""The statement cache is on, and what it must not skip (issue 17).

SQLite calls the authorizer only when it prepares a statement; sqlite3's cache hands back a
prepared statement for a text it has seen. These tests pin down both sides: a cached text
reaches no authorizer callback (why user SQL must never be one), user SQL through
``execute_untrusted`` is checked on every run, and a cached internal statement still counts
the tables it writes and reads (commit fan-out and watches depend on them).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from skald.db.connection import DocConnection, open_connection


def _deny_inserts(action: int, arg1: str | None, arg2: str | None, db: str | None, src: str | None) -> int:
    return sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_INSERT else sqlite3.SQLITE_OK


@pytest.fixture
def conn(tmp_path: Path) -> DocConnection:
    c = open_connection(tmp_path / "d.db")
    c.execute("CREATE TABLE t (v)")
    c.execute("CREATE TABLE log (v)")
    c.execute("CREATE TRIGGER t_log AFTER INSERT ON t BEGIN INSERT INTO log VALUES (new.v); END")
    return c


def test_a_cached_text_skips_the_authorizer_which_is_why_user_sql_is_never_cached(conn: DocConnection) -> None:
    sql = "INSERT INTO t VALUES (1)"
    conn.execute(sql)  # prepared and cached, no policy
    with conn.policy(_deny_inserts):
        conn.execute(sql)  # the cached statement runs: the policy never sees it
        for _ in range(3):  # user SQL of the same text: prepared afresh, refused every time
            with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
                conn.execute_untrusted(sql)
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 2
    conn.close()


def test_a_cached_statement_still_counts_the_tables_it_writes_and_reads(conn: DocConnection) -> None:
    for _ in range(3):
        conn.written_tables = set()
        conn.execute("INSERT INTO t VALUES (?)", (1,))  # the 2nd and 3rd are cache hits
        assert conn.written_tables == {"t", "log"}  # the trigger's table too
    with conn.track_reads() as tables:
        conn.execute("SELECT count(*) FROM log")
        conn.execute("SELECT count(*) FROM log")
    assert tables == {"log"}
    conn.close()


def test_user_sql_with_a_trailing_comment_stays_one_statement(conn: DocConnection) -> None:
    assert conn.execute_untrusted("SELECT 1 -- a comment").fetchone() == (1,)
    assert conn.execute_untrusted("SELECT 2 /* open comment").fetchone() == (2,)
    with pytest.raises(sqlite3.ProgrammingError, match="one statement"):
        conn.execute_untrusted("SELECT 1; SELECT 2")
    conn.close()


def test_a_statement_that_failed_running_still_counts_its_tables_when_it_comes_back_cached(
    conn: DocConnection,
) -> None:
    conn.execute("CREATE UNIQUE INDEX t_v ON t (v)")
    conn.execute("INSERT INTO t VALUES (?)", (1,))
    sql = "INSERT INTO t VALUES (?) /* first run fails */"
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(sql, (1,))  # prepared (cached), then failed running
    conn.written_tables = set()
    conn.execute(sql, (2,))  # the cached statement: no callback
    assert conn.written_tables == {"t", "log"}
    conn.close()


def test_a_cached_statement_prepared_again_after_a_schema_change_counts_its_new_tables(
    conn: DocConnection,
) -> None:
    sql = "INSERT INTO log VALUES (?)"
    conn.execute(sql, (1,))
    conn.execute("CREATE TABLE audit (v)")
    conn.execute("CREATE TRIGGER log_audit AFTER INSERT ON log BEGIN INSERT INTO audit VALUES (new.v); END")
    for _ in range(2):  # prepared again (callbacks), then a cache hit again
        conn.written_tables = set()
        conn.execute(sql, (2,))
        assert conn.written_tables == {"log", "audit"}
    conn.close()
