"""What the libSQL endpoint reads in SQL text, checked against SQLite itself."""

from __future__ import annotations

import re
import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skald.libsql.sqltext import TxnStatement, parameters, split_statements, transaction_statement


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("BEGIN", TxnStatement.BEGIN_WRITE),
        ("begin immediate;", TxnStatement.BEGIN_WRITE),
        ("BEGIN DEFERRED TRANSACTION", TxnStatement.BEGIN_WRITE),
        ("BEGIN TRANSACTION READONLY", TxnStatement.BEGIN_READ),
        (" -- why\n COMMIT", TxnStatement.COMMIT),
        ("END TRANSACTION", TxnStatement.COMMIT),
        ("/* x */ ROLLBACK ;", TxnStatement.ROLLBACK),
        ("ROLLBACK TO sp", None),
        ("SELECT 'BEGIN'", None),
        ("BEGINNING", None),
        ("COMMIT; DROP TABLE t", None),
    ],
)
def test_transaction_statements(sql: str, expected: TxnStatement | None) -> None:
    assert transaction_statement(sql) is expected


_piece = st.one_of(
    st.sampled_from(["?", ":a", "@b", "$c", ":a", "?2", "?7", "'?'", "'it''s :x'", '"?col"', "[?x]",
                     "-- ? :z\n", "/* ?3 */", "1", "x", "+", ","]),
)


def _sqlite_parameter_count(sql: str) -> int:
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE TABLE x (x)")
        conn.execute("CREATE TABLE \"?col\" (x)")
        try:
            conn.execute(sql, ())
        except sqlite3.ProgrammingError as exc:
            match = re.search(r"uses (\d+)", str(exc))
            assert match, str(exc)
            return int(match.group(1))
        return 0
    finally:
        conn.close()


@given(st.lists(_piece, max_size=12))
def test_parameters_are_numbered_as_sqlite_numbers_them(pieces: list[str]) -> None:
    sql = "SELECT " + " ".join(p if p.startswith(("-", "/")) else p + " ," for p in pieces) + " 0 FROM x"
    try:
        expected = _sqlite_parameter_count(sql)
    except sqlite3.Error:
        return  # not SQL SQLite accepts: nothing to compare
    names = parameters(sql)
    assert len(names) == expected, sql
    for name in names:
        assert name is None or name[0] in "?:@$"


@given(st.lists(st.sampled_from([
    "INSERT INTO t VALUES (';')", "SELECT 1", "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END",
    "SELECT 'a;b' -- ;\n", "/* ; */ SELECT 2",
]), min_size=1, max_size=6))
def test_split_statements_finds_each_statement(statements: list[str]) -> None:
    sql = "; ".join(statements) + ";"
    pieces = list(split_statements(sql))
    assert len(pieces) == len(statements)
    for piece in pieces:
        assert sqlite3.complete_statement(piece)
