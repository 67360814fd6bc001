"""A query stream's lines share prepared statements, never across classes (issue 17).

User SQL is otherwise prepared afresh on every run (the authorizer runs only at prepare time).
:class:`ReusedTexts` lets one stream reuse a statement prepared under the *same* enforcing
policy; these tests pin down what must not change when a line's statement comes from the cache:
its result (changes, rowid), the tables it writes (commit fan-out and watches), the refusal of a
text under a lower class, and a fresh prepare (with its callbacks) after a schema change.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from skald.db.connection import DocConnection, open_connection
from skald.db.sqlscope import StatementClass
from skald.errors import ScopeDenied
from skald.query.service import (
    ConstraintViolation,
    Limits,
    ReusedTexts,
    Statement,
    run_statement,
    shadow_tables,
)

LIMITS = Limits(timeout_ms=1000, max_rows=100, max_bytes=1 << 20)
INSERT = "INSERT INTO t(v) VALUES (?)"


@pytest.fixture
def conn(tmp_path: Path) -> DocConnection:
    c = open_connection(tmp_path / "d.db")
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
    c.execute("CREATE TABLE log (v)")
    shadow_tables(c)  # its first listing of the schema counts as touching sqlite_master: not a line's
    return c


def _insert(conn: DocConnection, reuse: ReusedTexts, value: str) -> tuple[int, int | None, set[str]]:
    conn.written_tables = set()
    result = run_statement(conn, Statement(INSERT, (value,)), StatementClass.WRITE, LIMITS, reuse=reuse)
    return result.changes, result.last_insert_rowid, conn.written_tables


def test_a_repeated_line_is_prepared_once_and_answers_as_if_fresh(conn: DocConnection) -> None:
    reuse = ReusedTexts.fresh()
    for n in range(4):
        assert _insert(conn, reuse, f"v{n}") == (1, n + 1, {"t"})
    with pytest.raises(ConstraintViolation):
        _insert(conn, reuse, "v0")  # fails alone; the next one still reports its row
    assert _insert(conn, reuse, "v9") == (1, 5, {"t"})
    conn.close()


def test_a_text_cached_for_a_write_is_never_handed_to_a_read(conn: DocConnection) -> None:
    reuse = ReusedTexts.fresh()
    _insert(conn, reuse, "a")
    for _ in range(2):  # a READ line of the same text is prepared under READ's policy: refused
        with pytest.raises(ScopeDenied):
            run_statement(conn, Statement(INSERT, ("b",)), StatementClass.READ, LIMITS, reuse=reuse)
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    conn.close()


def test_after_a_schema_change_the_statement_is_prepared_again_and_its_new_tables_count(
    conn: DocConnection,
) -> None:
    reuse = ReusedTexts.fresh()
    assert _insert(conn, reuse, "a")[2] == {"t"}
    conn.execute("CREATE TRIGGER t_log AFTER INSERT ON t BEGIN INSERT INTO log VALUES (new.v); END")
    shadow_tables(conn)  # the schema listing again (see the fixture)
    assert _insert(conn, reuse, "b") == (1, 2, {"t", "log"})
    assert _insert(conn, reuse, "c")[2] == {"t", "log"}
    conn.close()


def test_admin_lines_are_never_reused(conn: DocConnection) -> None:
    reuse = ReusedTexts.fresh()
    assert reuse.text("CREATE TABLE x (v)", StatementClass.ADMIN) is None
    assert reuse.text(INSERT, StatementClass.WRITE) is not None
    conn.close()
